"""Bradley–Terry training epochs, the same code on one CPU, one GPU or many processes (Accelerate).

    loss_i = -log σ(r(x, y+) - r(x, y-) - m_i) · w_i   (+ c · (r+ + r-)² / 2, reward centering)

m_i is TRL's optional per-pair `margin`, w_i an optional per-pair weight (AdaBoost-style reweighting).
Chosen and rejected go through the model in ONE forward pass (stacked), batches group similar lengths
and pad only to the longest text in the batch; or, for causal backbones, each pair is one packed segment
that holds the prompt once (`PackedExamples`, `marsrm.packing`).

Data parallelism: each optimizer step takes one global batch of `batch_size` pairs; with P processes
every process scores a slice of it, and the loss is the sum over the slice divided by the global batch
size (times P, since DDP averages gradients) — so P processes compute exactly the gradient one would.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from marsrm.config import ConfigError
from marsrm.packing import PairTokens, last_token_rewards, pack, packed_rewards, row_width
from marsrm.runtime import resolve_dtype


@dataclass
class OptimSettings:
    """Optimisation settings shared by `head` and `full` training."""

    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    center_rewards_coefficient: float = 0.0
    use_margin: bool = True
    seed: int = 0
    log_every: int = 10

    def validate(self) -> None:
        checks = [("epochs", self.epochs > 0), ("batch_size", self.batch_size >= 1), ("lr", self.lr > 0),
                  ("weight_decay", self.weight_decay >= 0), ("warmup_ratio", 0 <= self.warmup_ratio < 1),
                  ("grad_accum", self.grad_accum >= 1), ("max_grad_norm", self.max_grad_norm >= 0),
                  ("center_rewards_coefficient", self.center_rewards_coefficient >= 0)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"setting '{name}': invalid value {getattr(self, name)!r}")
        if self.scheduler not in {"linear", "cosine", "constant", "constant_with_warmup"}:
            raise ConfigError(f"setting 'scheduler': '{self.scheduler}' is not one of linear, cosine, constant, "
                              "constant_with_warmup")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None, center_coefficient: float = 0.0) -> torch.Tensor:
    """Per-pair loss, shape (b,): −log σ(r+ − r− − margin) · weight + c·(r+ + r−)².

    Its batch mean is TRL's `RewardTrainer` loss with `center_rewards_coefficient=c` (TRL has no weights)."""
    delta = chosen - rejected
    if margin is not None:
        delta = delta - margin
    loss = -F.logsigmoid(delta)
    if weight is not None:
        loss = loss * weight
    if center_coefficient:
        loss = loss + center_coefficient * (chosen + rejected).pow(2)
    return loss


# ---------------------------------------------------------------------------------------------
# What a batch is, per mode
# ---------------------------------------------------------------------------------------------

class HeadExamples:
    """Pairs as precomputed embeddings (head mode): features (n, d) for chosen and for rejected."""

    def __init__(self, chosen: np.ndarray, rejected: np.ndarray, margin=None, weight=None):
        self.chosen = torch.as_tensor(np.asarray(chosen), dtype=torch.float32)
        self.rejected = torch.as_tensor(np.asarray(rejected), dtype=torch.float32)
        self.margin = None if margin is None else torch.as_tensor(np.asarray(margin), dtype=torch.float32)
        self.weight = None if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        self.lengths = np.ones(len(self.chosen), dtype=np.int64)  # no padding to save: one group

    def __len__(self) -> int:
        return len(self.chosen)

    def collate(self, index: np.ndarray) -> dict:
        index = torch.as_tensor(index)
        batch = {"features": torch.cat([self.chosen[index], self.rejected[index]])}
        _add_pair_columns(batch, self, index)
        return batch

    @staticmethod
    def forward(module, batch: dict) -> torch.Tensor:
        return module(batch["features"])


class TokenExamples:
    """Pairs as token ids (full mode); chosen and rejected are padded together to the batch's longest.

    `last_token`: read each reward at the row's last real token (decoders) rather than from the model's own
    pooled output (encoders)."""

    def __init__(self, chosen_ids: list[list[int]], rejected_ids: list[list[int]], pad_id: int, margin=None,
                 weight=None, last_token: bool = False):
        self.chosen_ids, self.rejected_ids, self.pad_id = chosen_ids, rejected_ids, pad_id
        self.last_token = last_token
        self.margin = None if margin is None else torch.as_tensor(np.asarray(margin), dtype=torch.float32)
        self.weight = None if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        self.lengths = np.array([max(len(c), len(r)) for c, r in zip(chosen_ids, rejected_ids)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.chosen_ids)

    def collate(self, index: np.ndarray) -> dict:
        sequences = [self.chosen_ids[i] for i in index] + [self.rejected_ids[i] for i in index]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        _add_pair_columns(batch, self, torch.as_tensor(index))
        return batch

    def forward(self, module, batch: dict) -> torch.Tensor:
        if self.last_token:
            return last_token_rewards(module, batch["input_ids"], batch["attention_mask"])
        return module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]


class PackedExamples:
    """Pairs as shared-prompt segments (causal backbones): a batch's pairs packed into rows (`marsrm.packing`).

    Rows hold segments up to `budget` tokens (or the batch's longest segment, when longer), at the width that
    packs the batch into the fewest token slots (`marsrm.packing.row_width`). `lengths`
    are the plain path's (prompt + longer response), so both paths draw the same batches for the same seed.
    """

    def __init__(self, pairs: list[PairTokens], pad_id: int, budget: int, margin=None, weight=None):
        self.pairs, self.pad_id, self.budget = pairs, pad_id, budget
        self.margin = None if margin is None else torch.as_tensor(np.asarray(margin), dtype=torch.float32)
        self.weight = None if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        self.lengths = np.array([len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in pairs],
                                dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def collate(self, index: np.ndarray) -> dict:
        segments = [self.pairs[i] for i in index]
        batch = pack(segments, row_width([len(s) for s in segments], self.budget), self.pad_id)
        _add_pair_columns(batch, self, torch.as_tensor(index))
        return batch

    @staticmethod
    def forward(module, batch: dict) -> torch.Tensor:
        return packed_rewards(module, batch)


def _add_pair_columns(batch: dict, examples, index) -> None:
    if examples.margin is not None:
        batch["margin"] = examples.margin[index]
    if examples.weight is not None:
        batch["weight"] = examples.weight[index]


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group_factor: int = 50) -> list[np.ndarray]:
    """Shuffle, then sort by length inside mega-batches of `group_factor` batches, then shuffle batch order.

    Batches then hold texts of similar length (little padding) while the epoch stays random.
    """
    order = rng.permutation(len(lengths))
    mega = batch_size * group_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------------------------
# The epochs
# ---------------------------------------------------------------------------------------------

def resolve_mixed_precision(mixed_precision: str, cpu: bool = False) -> str:
    """Accelerate's mixed_precision for training on the CPU (`cpu`) or this process's device: 'auto' → 'bf16'
    where that device computes bf16 natively, else 'no' (the `train` purpose of `marsrm.runtime.resolve_dtype`)."""
    device = None
    if mixed_precision == "auto":
        from accelerate.state import PartialState

        device = torch.device("cpu") if cpu else PartialState().device
    return resolve_dtype(mixed_precision, device, "train")


def make_accelerator(mixed_precision: str = "no", cpu: bool = False):
    """An Accelerator with this precision ('auto' resolved), even if something else in the process made one
    with another."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    mixed_precision = resolve_mixed_precision(mixed_precision, cpu)
    state = AcceleratorState._shared_state
    other_precision = state and state.get("_mixed_precision", mixed_precision) != mixed_precision
    if other_precision and PartialState().num_processes == 1:
        # Accelerate keeps one precision per process; a single process (e.g. a TRL trainer that ran earlier,
        # or a bf16 full-mode run before a head-mode one) can safely start over.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def train_epochs(module: torch.nn.Module, examples, settings: OptimSettings, *, accelerator=None, log=None,
                 step_offset: int = 0, desc: str = "training", progress: bool = True) -> dict:
    """Train `module` in place on `examples` for `settings.epochs` epochs; returns a summary dict.

    `examples` is a HeadExamples, TokenExamples or PackedExamples. Seeds: the batch order depends only on settings.seed.
    """
    settings.validate()
    accelerator = accelerator or make_accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)

    n_epochs = math.ceil(settings.epochs)
    epoch_batches = [length_grouped_batches(examples.lengths, settings.batch_size, rng) for _ in range(n_epochs)]
    fraction = settings.epochs - (n_epochs - 1)
    last = epoch_batches[-1]
    epoch_batches[-1] = last[: max(1, round(len(last) * fraction))]
    batches = [b for epoch in epoch_batches for b in epoch]
    total_steps = math.ceil(len(batches) / settings.grad_accum)

    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    # One fused kernel instead of a Python loop over every tensor: the loop took a quarter of a full-mode
    # step on 2 CPU cores (bench/bench_train.py). Same update rule; Hugging Face's Trainer uses it too.
    fused = accelerator.device.type in {"cpu", "cuda"}
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, fused=fused)
    scheduler = get_scheduler(settings.scheduler, optimizer, num_warmup_steps=int(settings.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    module.train()

    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="pair",
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    started, step, seen = time.perf_counter(), 0, 0
    window = {"loss": 0.0, "correct": 0.0, "pairs": 0}
    for i, index in enumerate(batches):
        local = index[rank::world]  # this process's slice of the global batch
        batch = {k: v.to(accelerator.device) for k, v in examples.collate(local).items()}
        rewards = examples.forward(module, batch).float()
        chosen, rejected = rewards[: len(local)], rewards[len(local):]
        losses = bradley_terry_loss(chosen, rejected, margin=batch.get("margin") if settings.use_margin else None,
                                    weight=batch.get("weight"),
                                    center_coefficient=settings.center_rewards_coefficient)
        loss = losses.sum() * world / (len(index) * settings.grad_accum)
        boundary = (i + 1) % settings.grad_accum == 0 or i + 1 == len(batches)
        if boundary:
            loss.backward()
        else:
            with accelerator.no_sync(module):
                loss.backward()
        if boundary:
            if settings.max_grad_norm > 0:
                accelerator.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        window["loss"] += losses.detach().sum().item()
        window["correct"] += (chosen > rejected).sum().item()
        window["pairs"] += len(local)
        seen += len(index)
        bar.update(len(index))
        if boundary and (step % settings.log_every == 0 or i + 1 == len(batches)) and window["pairs"]:
            record = {"event": "train", "step": step_offset + step, "loss": window["loss"] / window["pairs"],
                      "batch_accuracy": window["correct"] / window["pairs"], "lr": scheduler.get_last_lr()[0],
                      "pairs_per_s": seen / (time.perf_counter() - started)}
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['batch_accuracy']:.3f}")
            if log is not None and accelerator.is_main_process:
                log.log(record, step=step_offset + step)
            window = {"loss": 0.0, "correct": 0.0, "pairs": 0}
    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.unwrap_model(module).eval()
    return {"steps": step, "pairs": seen, "seconds": elapsed, "pairs_per_s": seen / max(elapsed, 1e-9)}
