import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from marsrm.config import ConfigError
from marsrm.model import ScalarHead
from marsrm.train import (HeadExamples, OptimSettings, TokenExamples, bradley_terry_loss, length_grouped_batches,
                          train_epochs)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bradley_terry_loss_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.allclose(loss, torch.tensor([np.log1p(np.exp(-2.0)), np.log(2.0)], dtype=torch.float32))
    with_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([2.0, 0.0]))
    assert torch.allclose(with_margin[0], torch.tensor(np.log(2.0), dtype=torch.float32))
    weighted = bradley_terry_loss(chosen, rejected, weight=torch.tensor([0.0, 3.0]))
    assert weighted[0] == 0 and torch.isclose(weighted[1], torch.tensor(3 * np.log(2.0), dtype=torch.float32))
    centered = bradley_terry_loss(chosen, rejected, center_coefficient=0.5)
    assert torch.isclose(centered[0] - loss[0], torch.tensor(0.5 * (2.0 + 0.0) ** 2))


def test_centering_and_margin_match_trl_reward_trainer_on_the_same_tensors():
    """TRL's own `RewardTrainer.compute_loss`, run on fixed rewards, equals the batch mean of ours."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import RewardTrainer

    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(6, generator=generator) * 2, torch.randn(6, generator=generator) * 2
    margin = torch.rand(6, generator=generator)

    class FixedRewards(torch.nn.Module):
        def forward(self, **inputs):
            return SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))

    identity = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    for coefficient, with_margin in ((0.01, False), (0.3, True), (None, True)):
        model = FixedRewards().eval()
        trainer = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=coefficient),
                                  accelerator=identity, _metrics={"eval": defaultdict(list)},
                                  _total_train_tokens=0, _tp_size=1)
        inputs = {"attention_mask": torch.ones(12, 3)} | ({"margin": margin} if with_margin else {})
        theirs = RewardTrainer.compute_loss(trainer, model, inputs)
        ours = bradley_terry_loss(chosen, rejected, margin=margin if with_margin else None,
                                  center_coefficient=coefficient or 0.0).mean()
        assert torch.isclose(ours, theirs, rtol=1e-6), (coefficient, ours, theirs)


def test_length_grouped_batches_cover_every_pair_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=1000)
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1), group_factor=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    # grouping: padding waste is far below that of random batches
    waste = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    random_batches = np.array_split(rng.permutation(1000), len(batches))
    random_waste = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in random_batches)
    assert waste < 0.25 * random_waste
    again = length_grouped_batches(lengths, 16, np.random.default_rng(1), group_factor=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def _separable(n=200, d=12, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=d)
    chosen, rejected = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    swap = chosen @ theta + noise * rng.normal(size=n) < rejected @ theta
    chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
    return chosen, rejected


def test_head_training_learns_a_separable_preference():
    chosen, rejected = _separable()
    torch.manual_seed(0)
    head = ScalarHead(chosen.shape[1])
    with torch.no_grad():
        before = (head(torch.tensor(chosen, dtype=torch.float32)) > head(torch.tensor(rejected, dtype=torch.float32)))
    summary = train_epochs(head, HeadExamples(chosen, rejected), OptimSettings(epochs=30, batch_size=32, lr=0.05),
                           progress=False)
    with torch.no_grad():
        after = (head(torch.tensor(chosen, dtype=torch.float32)) > head(torch.tensor(rejected, dtype=torch.float32)))
    assert summary["pairs"] == 30 * 200
    assert after.float().mean() > 0.95 > before.float().mean()


def test_training_is_seeded():
    chosen, rejected = _separable(noise=1.0)
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        head = ScalarHead(chosen.shape[1])
        train_epochs(head, HeadExamples(chosen, rejected), OptimSettings(epochs=2, batch_size=8, seed=5, lr=0.01),
                     progress=False)
        weights.append(head.linear.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_pair_weights_change_what_is_learned():
    chosen, rejected = _separable(noise=2.0)
    results = []
    for weight in (None, np.r_[np.zeros(100), np.ones(100)]):
        torch.manual_seed(0)
        head = ScalarHead(chosen.shape[1])
        train_epochs(head, HeadExamples(chosen, rejected, weight=weight), OptimSettings(epochs=2, lr=0.01),
                     progress=False)
        results.append(head.linear.weight.detach().clone())
    assert not torch.allclose(results[0], results[1])


def test_token_examples_pad_both_sides_together():
    examples = TokenExamples([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)
    batch = examples.collate(np.array([0, 1]))
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 0, 0], [6, 7, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 1, 2]
    assert examples.lengths.tolist() == [3, 2]


@pytest.mark.parametrize("name,value", [("epochs", 0), ("batch_size", 0), ("lr", -1.0), ("scheduler", "nope")])
def test_invalid_settings_are_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        OptimSettings(**{name: value}).validate()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Data parallel over two CPU processes (gloo) computes the same weights as one process."""
    script = os.path.join(REPO, "tests", "scripts", "ddp_head.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, script, str(one)], check=True, env=env, timeout=300)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561",
                             script, str(two)], env=env, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "world 2" in result.stdout
    a, b = load_file(str(one)), load_file(str(two))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_an_accelerator_of_another_precision_earlier_in_the_process_does_not_block_training():
    from marsrm.train import make_accelerator

    assert make_accelerator("bf16", cpu=True).mixed_precision == "bf16"  # as a TRL trainer might leave it
    assert make_accelerator("no", cpu=True).mixed_precision == "no"


def test_auto_mixed_precision_is_bf16_exactly_where_the_cpu_computes_it_natively():
    from marsrm.runtime import cpu_has_bf16
    from marsrm.train import make_accelerator, resolve_mixed_precision

    expected = "bf16" if cpu_has_bf16() else "no"
    assert resolve_mixed_precision("auto", cpu=True) == expected
    assert make_accelerator("auto", cpu=True).mixed_precision == expected
    assert resolve_mixed_precision("fp16", cpu=True) == "fp16"
