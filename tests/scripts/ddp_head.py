"""Train a linear head on fixed synthetic embeddings; run by tests under 1 and 2 processes."""
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from marsrm.model import ScalarHead
from marsrm.train import HeadExamples, OptimSettings, make_accelerator, train_epochs

out = sys.argv[1]
rng = np.random.default_rng(0)
n, d = 96, 16
theta = rng.normal(size=d)
chosen, rejected = rng.normal(size=(n, d)), rng.normal(size=(n, d))
swap = chosen @ theta < rejected @ theta
chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()

accelerator = make_accelerator(cpu=True)
torch.manual_seed(0)
head = ScalarHead(d)
settings = OptimSettings(epochs=3, batch_size=16, lr=0.05, seed=0, max_grad_norm=1.0, weight_decay=0.01)
train_epochs(head, HeadExamples(chosen, rejected), settings, accelerator=accelerator, progress=False)
if accelerator.is_main_process:
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out)
    print("world", accelerator.num_processes)
