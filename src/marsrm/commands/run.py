"""`marsrm run`: one strategy, one seed, one run directory: the rounds of `marsrm.loop`, resumable after a kill.

The run directory holds config.yaml (the settings as given), run.json (as resolved, with versions and
hardware), fingerprint.json (what resume compares), metrics.jsonl, rounds/, checkpoints/round-t/ (written
last: it commits round t), then model/, per-pair margins and ids, and results.json.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marsrm import metrics, record
from marsrm.card import write_model_card
from marsrm.commands.train import TrainConfig
from marsrm.config import ConfigError, setting, to_yaml
from marsrm.io import (MetricsLog, atomic_write, atomic_write_dir, atomic_write_json, atomic_write_text, read_metrics,
                       remove_temporaries, run_directory)
from marsrm.learners import make_learner
from marsrm.loop import LoopSettings, open_base_pool, parse_size, run_rounds
from marsrm.pipeline import build_model, evaluate_scores, format_table, load_split
from marsrm.train import make_accelerator


@dataclass
class RunConfig(LoopSettings, TrainConfig):
    """`marsrm run`: one strategy, one seed, one run directory."""

    epochs: float | None = setting(None, "epochs on each round's base ∪ sample (default: 1, as in the paper)", gt=0)
    resume: bool = setting(False, "continue the run in --output from its last completed round")
    output: str = setting("runs/mars", "run directory (config.yaml, run.json, metrics.jsonl, rounds/, checkpoints/, "
                          "model/, results.json)")

    def validate(self) -> None:
        TrainConfig.validate(self)
        parse_size(self.pool_memory, "pool_memory")

    def optim(self):
        optim = super().optim()
        if self.epochs is None:  # the paper trains one epoch per round
            optim.epochs = 1.0
        return optim


def config_fingerprint(config: RunConfig) -> dict:
    """fingerprint.json's payload: the canonical settings that determine the run's result (`marsrm.record`)."""
    return record.fingerprint_file_payload(config)


def run(config: RunConfig, echo=print, pool=None) -> dict:
    """Run `marsrm run`: T rounds of margins → allocation → sample → train; returns results.json's dict.

    pool: optional variants source (see `loop.open_base_pool`) used instead of the directory `config.pool`.
    """
    config.validate()
    if config.needs_pool() and pool is None and not config.pool:
        raise ConfigError(f"setting 'pool': strategy '{config.strategy}' samples variants; build a pool with "
                          "`marsrm augment` and pass --pool DIR")
    split = load_split(config, echo)  # the data's own errors come before any output or weights
    # An overwritten run is replaced only once the new one has finished (`run_directory`).
    with run_directory(config.output, overwrite=config.overwrite, resume=config.resume) as run_dir:
        results = _run(config, run_dir, echo, pool, split)
    if "eval" in results:
        echo(format_table(results["eval"], f"held-out after {config.rounds} rounds of {config.strategy}"))
    echo(f"run directory: {config.output}")
    return results


def _run(config: RunConfig, run_dir: Path, echo, pool, loaded) -> dict:
    """`run` inside its locked run directory `run_dir`: settings, rounds (or the rest of them), final evaluation.
    loaded: `load_split(config)`."""
    start_round, step = 1, 0
    if config.resume:
        start_round, step = _resume_point(config, run_dir)
        echo(f"resuming {run_dir} at round {start_round}")
    else:
        atomic_write_text(run_dir / "config.yaml", to_yaml(config))
        atomic_write_json(run_dir / "run.json", record.run_record(config))
        atomic_write_json(run_dir / "fingerprint.json", config_fingerprint(config))

    split, reports = loaded
    pool = open_base_pool(config, split.train, pool, echo)
    if pool.sizes.any():
        echo(f"pool: {int(pool.sizes.sum())} variants for {int((pool.sizes > 0).sum())}/{len(split.train)} base "
             "pairs")
    log = MetricsLog(run_dir)
    model = build_model(config, seed=config.seed, progress=config.progress)
    accelerator = make_accelerator(config.mixed_precision if config.mode == "full" else "no")
    learner = make_learner(model, accelerator=accelerator, log=log, progress=config.progress)
    run_rounds(config, learner, split, pool, seed=config.seed, optim=config.optim(), run_dir=run_dir, log=log,
               echo=echo, start_round=start_round, step=step)
    results = _finish(config, run_dir, learner, model, split, reports)
    log.close()
    return results


def _resume_point(config: RunConfig, run_dir: Path) -> tuple[int, int]:
    """(the first round still to run, optimizer steps taken before it); refuses a directory made with different
    settings. A round is done when its checkpoint exists (written last); whatever a killed process left of later
    rounds or of the final evaluation is removed, so the resumed run writes the files an uninterrupted one would."""
    saved = record.read_fingerprint(run_dir, type(config))
    if saved is None:
        raise ConfigError(f"setting 'resume': {run_dir} holds no run to resume (no fingerprint.json)")
    changed = record.differences(saved, config, ignore=record.RESUME_FREE)
    if changed:
        details = ", ".join(changed[:5])
        raise ConfigError(f"setting 'resume': {run_dir} was made with other settings ({details}); resume with "
                          "the same settings or start a new --output")
    done = 0
    while (run_dir / "checkpoints" / f"round-{done + 1}" / "marsrm.json").exists() and \
            (run_dir / "rounds" / f"round-{done + 1}.npz").exists():
        done += 1
    remove_temporaries(run_dir)
    # Forget log lines of a round that was cut short: it will run again.
    metrics_file = run_dir / "metrics.jsonl"
    records = read_metrics(run_dir) if metrics_file.exists() else []
    rounds = [r for r in records if r.get("event") == "round" and r["round"] <= done]
    step = rounds[-1].get("step") if rounds else 0
    if step is None:  # a run from before rounds recorded their step: keep the round lines only
        kept, step = rounds, 0
    else:
        kept = [r for r in records if (r.get("event") == "round" and r["round"] <= done)
                or (r.get("event") == "train" and r["step"] <= step)]
    atomic_write_text(metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    for stale in (run_dir / "model", run_dir / "results.json"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    return done + 1, step


def _write_npy(path, array) -> None:
    with open(path, "wb") as handle:  # np.save on a name would append ".npy" to the temporary's name
        np.save(handle, array)


def _finish(config: RunConfig, run_dir: Path, learner, model, split, reports) -> dict:
    """Final evaluation with full intervals, the saved model with its model card, per-pair held-out margins,
    results.json."""
    results = {"strategy": config.strategy, "seed": config.seed, "mode": config.mode, "rounds": config.rounds,
               "budget": config.budget, "base_pairs": len(split.train), "data": reports}
    model.spec.normalization = metrics.reward_normalization(*learner.scores(split.train))
    for name, pairs in (("val", split.val), ("eval", split.eval)):
        if pairs:
            chosen, rejected = learner.scores(pairs)
            results[name] = evaluate_scores(pairs, chosen, rejected, n_resamples=config.n_resamples,
                                            seed=config.seed)
            atomic_write(run_dir / f"{name}_margins.npy", lambda tmp, m=chosen - rejected: _write_npy(tmp, m))
            atomic_write_json(run_dir / f"{name}_ids.json", [p.id for p in pairs])
    card = {**results, "train_pairs": len(split.train)}

    def save(directory):
        model.save(directory)
        write_model_card(directory, spec=model.spec, results=card, settings=record.model_settings(config))

    atomic_write_dir(run_dir / "model", save)
    results["rounds_log"] = read_metrics(run_dir, event="round")
    atomic_write_json(run_dir / "results.json", results)
    return results
