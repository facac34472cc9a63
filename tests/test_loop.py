"""The MARS rounds on real HH-RLHF pairs with a small in-memory pool (word-dropout variants)."""
import dataclasses

import numpy as np
import pytest

from marsrm.config import ConfigError
from marsrm.data import load_pairs
from marsrm.io import read_metrics
from marsrm.commands.run import RunConfig, run


class DropoutPool:
    """n×n variants per pair: chosen i and rejected j each drop every 7th word from a different offset."""

    def __init__(self, pairs, n=3):
        self.pairs, self.n = {p.id: p for p in pairs}, n

    @staticmethod
    def _drop(text, offset):
        kept = " ".join(w for k, w in enumerate(text.split()) if (k + offset) % 7)
        return kept or text

    def variants(self, pair_id):
        pair = self.pairs.get(pair_id)
        if pair is None:
            return []
        return [dataclasses.replace(pair, id=f"{pair_id}#{i}-{j}", chosen=self._drop(pair.chosen, i + 1),
                                    rejected=self._drop(pair.rejected, j + 1), meta={"source_id": pair_id})
                for i in range(self.n) for j in range(self.n)]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("loop-cache"))


@pytest.fixture(autouse=True)
def _one_cache_for_this_module(_private_cache, shared_cache, monkeypatch):
    """These runs embed the same texts: share one embedding cache between them (it is safe to)."""
    monkeypatch.setenv("MARSRM_CACHE", shared_cache)


@pytest.fixture(scope="module")
def hh_pool(hh_dir):
    return DropoutPool(load_pairs(str(hh_dir / "helpful-online-test.jsonl.gz")).pairs)


def config(tmp_path, **overrides):
    values = dict(data="", train_size=60, val_size=20, eval_size=60, rounds=3, budget=120, strategy="mars",
                  tau=1.0, output=str(tmp_path / "run"), progress=False, n_resamples=50, round_resamples=20,
                  max_length=64, lr=0.01)
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture
def data_path(hh_dir):
    return str(hh_dir / "helpful-online-test.jsonl.gz")


def read_rounds(run_dir):
    return read_metrics(run_dir, event="round")


@pytest.mark.slow
def test_rounds_spend_the_budget_and_log_everything(tmp_path, data_path, hh_pool):
    results = run(config(tmp_path, data=data_path), echo=lambda *_: None, pool=hh_pool)
    run_dir = tmp_path / "run"
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        for key in ("margin_mean", "mis_ranked", "allocation_entropy", "effective_sample_size",
                    "lowest_decile_budget_share", "mean_sigmoid_prime", "hessian_condition_number",
                    "hessian_largest_eigenvalue", "hessian_smallest_nonzero_eigenvalue", "hessian_trace",
                    "val_accuracy", "eval_accuracy", "lowest_signed_decile_budget_share", "base_loss", "val_loss",
                    "eval_loss"):
            assert key in record, key
        assert record["synthetic_pairs"] == 120
        assert 0 < record["mean_sigmoid_prime"] <= 0.25
    # The loss on the base pairs after round t is the loss at the margins round t + 1 allocates with.
    for before, after in zip(rounds, rounds[1:]):
        margins = np.load(run_dir / "rounds" / f"round-{after['round']}.npz")["margins"]
        assert before["base_loss"] == pytest.approx(float(np.mean(np.logaddexp(0, -margins))), rel=1e-9)
    saved = np.load(run_dir / "rounds" / "round-2.npz")
    assert saved["counts"].sum() == 120 and len(saved["pair_index"]) == 120
    # mars: budget never increases with |margin| (beyond one unit of rounding)
    order = np.argsort(np.abs(saved["margins"]))
    assert np.all(np.diff(saved["counts"][order]) <= 1)
    assert results["eval"]["n"] == 60 and (run_dir / "eval_margins.npy").exists()
    assert (run_dir / "model" / "marsrm.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, {"strategy": "self-train", "accumulate": True, "tau": None}])
def test_resume_after_an_interrupted_round_matches_an_uninterrupted_run(tmp_path, data_path, hh_pool, settings):
    whole = run(config(tmp_path, data=data_path, output=str(tmp_path / "whole"), **settings), echo=lambda *_: None,
                pool=hh_pool)
    # stop after round 2 by asking for 2 rounds, then leave debris of a round-3 that was cut short
    cut = config(tmp_path, data=data_path, output=str(tmp_path / "cut"), rounds=2, **settings)
    run(cut, echo=lambda *_: None, pool=hh_pool)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as handle:
        handle.write('{"event": "round", "round": 3, "trunc')
    resumed = run(dataclasses.replace(cut, rounds=3, resume=True), echo=lambda *_: None, pool=hh_pool)
    assert resumed["eval"]["accuracy"]["value"] == whole["eval"]["accuracy"]["value"]
    assert np.array_equal(np.load(tmp_path / "whole" / "eval_margins.npy"),
                          np.load(tmp_path / "cut" / "eval_margins.npy"))
    assert [r["round"] for r in read_rounds(tmp_path / "cut")] == [1, 2, 3]


@pytest.mark.slow
def test_full_mode_rounds_carry_the_weights_and_resume_to_the_same_model(tmp_path, data_path, hh_pool):
    small = dict(mode="full", data=data_path, train_size=24, val_size=0, eval_size=24, rounds=2, budget=16,
                 strategy="mars-signed", tau=None, max_length=48, batch_size=8, lr=1e-4)
    whole = run(config(tmp_path, output=str(tmp_path / "whole"), **small), echo=lambda *_: None, pool=hh_pool)
    cut = config(tmp_path, output=str(tmp_path / "cut"), **{**small, "rounds": 1})
    run(cut, echo=lambda *_: None, pool=hh_pool)
    resumed = run(dataclasses.replace(cut, rounds=2, resume=True), echo=lambda *_: None, pool=hh_pool)
    rounds = read_rounds(tmp_path / "whole")
    assert [r["synthetic_pairs"] for r in rounds] == [16, 16]
    assert rounds[0]["margin_abs_mean"] != rounds[1]["margin_abs_mean"]  # round 2 scores the trained weights
    assert "hessian_condition_number" not in rounds[0] and 0 < rounds[0]["mean_sigmoid_prime"] <= 0.25
    assert np.array_equal(np.load(tmp_path / "whole" / "eval_margins.npy"),
                          np.load(tmp_path / "cut" / "eval_margins.npy"))
    assert resumed["eval"]["accuracy"]["value"] == whole["eval"]["accuracy"]["value"]
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut" / "model").config.num_labels == 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["west-of-n", "self-train", "adaboost", "none", "mars-signed", "uniform"])
def test_every_strategy_runs(tmp_path, data_path, hh_pool, strategy):
    results = run(config(tmp_path, data=data_path, strategy=strategy, rounds=2, tau=None), echo=lambda *_: None,
                  pool=hh_pool)
    rounds = read_rounds(tmp_path / "run")
    expected = 0 if strategy in ("none", "adaboost") else 120
    assert [r["synthetic_pairs"] for r in rounds] == [expected, expected]
    assert 0 <= results["eval"]["accuracy"]["value"] <= 1


def test_west_of_n_takes_each_pairs_most_confident_variants(tmp_path, data_path, hh_pool):
    run(config(tmp_path, data=data_path, strategy="west-of-n", rounds=1, budget=60, tau=None, val_size=0,
               eval_size=10), echo=lambda *_: None, pool=hh_pool)
    saved = np.load(tmp_path / "run" / "rounds" / "round-1.npz")
    assert np.all(saved["counts"] == 1)  # 60 pairs, budget 60: one variant each, the top one


@pytest.mark.parametrize("overrides,setting", [({"budget": -1}, "budget"), ({"tau": -0.5}, "tau"),
                                               ({"rounds": 0}, "rounds"), ({"strategy": "best"}, "strategy")])
def test_bad_settings_are_refused_by_name(tmp_path, overrides, setting):
    with pytest.raises(ConfigError, match=setting):
        run(config(tmp_path, **overrides), echo=lambda *_: None)


def test_augmenting_without_a_pool_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="pool"):
        run(config(tmp_path, data="unused"), echo=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_a_pool_for_other_pairs_is_refused(tmp_path, data_path):
    class OtherPool:
        def variants(self, pair_id):
            return []

    with pytest.raises(ConfigError, match="other pairs"):
        run(config(tmp_path, data=data_path), echo=lambda *_: None, pool=OtherPool())


def test_existing_run_is_not_overwritten_and_resume_checks_settings(tmp_path, data_path, hh_pool):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        run(config(tmp_path, data=data_path), echo=lambda *_: None, pool=hh_pool)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    first = config(tmp_path, data=data_path, output=str(tmp_path / "r2"), rounds=1, strategy="none")
    run(first, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="lr: 0.01 → 0.5"):
        run(dataclasses.replace(first, lr=0.5, resume=True), echo=lambda *_: None)
    # A setting the run never uses (no augmentation: no budget) is not a different run.
    run(dataclasses.replace(first, budget=7, resume=True), echo=lambda *_: None)


def test_base_epochs_train_on_the_base_pairs_before_the_first_margins(tmp_path, data_path, hh_pool):
    cold = config(tmp_path, data=data_path, output=str(tmp_path / "cold"), rounds=1, strategy="mars-signed",
                  tau=0.5, val_size=0)
    warm = dataclasses.replace(cold, output=str(tmp_path / "warm"), base_epochs=2.0)
    run(cold, echo=lambda *_: None, pool=hh_pool)
    run(warm, echo=lambda *_: None, pool=hh_pool)
    cold_margins = np.load(tmp_path / "cold" / "rounds" / "round-1.npz")["margins"]
    warm_margins = np.load(tmp_path / "warm" / "rounds" / "round-1.npz")["margins"]
    # A zero-initialised head has no opinion; two epochs on the base pairs rank most of them right.
    assert np.all(cold_margins == 0) or np.abs(cold_margins).mean() < np.abs(warm_margins).mean()
    assert np.mean(warm_margins > 0) > 0.6
    steps = lambda name: read_rounds(tmp_path / name)[0]["step"]  # noqa: E731
    assert steps("warm") > steps("cold")
    with pytest.raises(ConfigError, match="base_epochs"):
        run(dataclasses.replace(cold, base_epochs=float("nan")), echo=lambda *_: None, pool=hh_pool)
