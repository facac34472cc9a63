"""`marsrm eval`: score a saved reward model on preference pairs, with bootstrap intervals."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from marsrm import data as data_mod
from marsrm.config import ConfigError, check_settings, setting
from marsrm.io import atomic_write_json
from marsrm.pipeline import DataSettings, evaluate_model, format_table


@dataclass
class EvalConfig(DataSettings):
    """`marsrm eval`: score a saved reward model on preference pairs."""

    model: str = setting("runs/train/model", "saved reward model directory (marsrm, or any sequence-"
                         "classification model directory)")
    train_size: int | None = setting(None, "pairs to leave out first (the same seeded draw as training used), so "
                                     "the held-out pairs match; none = evaluate on every pair", ge=1)
    output: str | None = setting(None, "JSON file for the results (default: <model>/../eval-<data>.json)")
    n_resamples: int = setting(1000, "bootstrap resamples for the 95% intervals", ge=1)
    allow_pickle: bool = setting(False, "allow loading pickle weights (off: they can run arbitrary code)")
    trust_remote_code: bool = setting(False, "allow a model's own Python code to run")
    allow_untrained_head: bool = setting(False, "evaluate a model directory whose score head was never trained "
                                         "(transformers initialises it at random); off: refuse it")
    batch_size: int = setting(64, "texts per scoring batch", ge=1)

    def validate(self) -> None:
        check_settings(self)
        for name in ("eval_data", "eval_split", "allow_overlap"):  # training's settings, meaningless here
            if getattr(self, name):
                raise ConfigError(f"setting '{name}': `marsrm eval` scores the pairs of --data (and --split); "
                                  f"drop --{name.replace('_', '-')}")

    def load_kwargs(self) -> dict:
        """`load_pairs`'s keywords: a dataset's test split by default, unless --train-size/--eval-size ask for the
        held-out part of the split training drew from (its 'train' by default, as `marsrm train` reads it)."""
        matching = bool(self.train_size or self.eval_size)
        return {**super().load_kwargs(), "default_splits": ("train", "test") if matching else ("test",)}


def evaluate(config: EvalConfig, echo=print) -> dict:
    """Run `marsrm eval`: score a saved model, print a table, write JSON."""
    from marsrm.model import load_reward_model

    config.validate()
    loaded = data_mod.load_pairs(config.data, **config.load_kwargs())  # the data's errors before any weights
    echo(loaded.report.summary())
    pairs = loaded.pairs
    if config.train_size or config.eval_size:
        pairs = data_mod.split_pairs(pairs, train_size=config.train_size or 0, eval_size=config.eval_size,
                                     seed=config.data_seed).eval
    if not pairs:
        raise ConfigError("setting 'data': no pairs left to evaluate")
    model = load_reward_model(config.model, allow_pickle=config.allow_pickle,
                              trust_remote_code=config.trust_remote_code,
                              allow_untrained_head=config.allow_untrained_head)
    result = evaluate_model(model, pairs, n_resamples=config.n_resamples, seed=config.seed,
                            batch_size=config.batch_size)
    result.update({"model": str(config.model), "data": config.data, "pairs": len(pairs)})
    out = Path(config.output) if config.output else Path(config.model).parent / (
        "eval-" + config.data.replace("/", "_").replace(os.sep, "_") + ".json")
    atomic_write_json(out, result)
    echo(format_table(result))
    echo(f"wrote {out}")
    return result


