"""`marsrm train`: one reward model from preference pairs: data → split → model → train → evaluate → save."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from marsrm import metrics, record
from marsrm.card import write_model_card
from marsrm.config import ConfigError, check_settings, setting, to_yaml
from marsrm.io import MetricsLog, atomic_write_json, atomic_write_text, run_directory
from marsrm.learners import make_learner
from marsrm.pipeline import (DataSettings, ModelSettings, TrainingSettings, build_model, check_max_length,
                             evaluate_model, flat_values, format_table, load_split, truncation_report)
from marsrm.train import OptimSettings, make_accelerator


@dataclass
class TrainConfig(DataSettings, ModelSettings, TrainingSettings):
    """`marsrm train`: one reward model from preference pairs."""

    output: str = setting("runs/train", "run directory (config.yaml, run.json, metrics.jsonl, tensorboard/, model/ "
                          "with its README.md model card, results.json)")
    overwrite: bool = setting(False, "replace an existing run directory")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        check_settings(self)
        self.optim().validate()
        check_max_length(self.backbone, self.max_length, trust_remote_code=self.trust_remote_code)

    def optim(self) -> OptimSettings:
        return self.optim_settings(self.mode, self.seed)


def train(config: TrainConfig, echo=print) -> dict:
    """Run `marsrm train`: returns the results dict also written to `<output>/results.json`.

    An existing run in `output` (with `overwrite`) is replaced only once the new one is complete.
    """
    config.validate()
    split, reports = load_split(config, echo)  # the data's own errors come before any output or weights
    if not split.train:
        raise ConfigError("setting 'train_size': no training pairs")
    with run_directory(config.output, overwrite=config.overwrite) as run_dir:
        atomic_write_text(run_dir / "config.yaml", to_yaml(config))
        atomic_write_json(run_dir / "run.json", record.run_record(config))
        log = MetricsLog(run_dir)
        started = time.perf_counter()
        model = build_model(config, seed=config.seed, progress=config.progress)
        truncation = truncation_report(model, split.train + split.val + split.eval)
        echo(truncation.summary(config.max_length))
        accelerator = make_accelerator(config.mixed_precision if config.mode == "full" else "no")
        learner = make_learner(model, accelerator=accelerator, log=log, progress=config.progress)
        summary = learner.fit(split.train, config.optim())
        train_chosen, train_rejected = learner.scores(split.train)
        model.spec.normalization = metrics.reward_normalization(train_chosen, train_rejected)

        results = {"mode": config.mode, "backbone": config.backbone, "train_pairs": len(split.train),
                   "train": summary, "truncation": dataclasses.asdict(truncation), "data": reports,
                   "train_accuracy": metrics.pairwise_accuracy(train_chosen - train_rejected)}
        for name, pairs in (("val", split.val), ("eval", split.eval)):
            if pairs:
                results[name] = evaluate_model(model, pairs, n_resamples=config.n_resamples, seed=config.seed)
                log.log({"event": name, **flat_values(results[name])}, step=summary["steps"])
        if accelerator.is_main_process:
            model.save(run_dir / "model")
            write_model_card(run_dir / "model", spec=model.spec, results=results,
                             settings=record.model_settings(config))
            results["seconds"] = time.perf_counter() - started
            atomic_write_json(run_dir / "results.json", results)
        log.close()
    for name, title in (("val", "validation"), ("eval", "held-out")):
        if name in results:
            echo(format_table(results[name], title))
    echo(f"model saved to {Path(config.output) / 'model'}")
    return results


