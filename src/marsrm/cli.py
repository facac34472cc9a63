"""The `marsrm` command: parses a config, calls the library, prints. User mistakes end in one line, exit 2."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from marsrm import __version__
from marsrm.config import ConfigError, build_parser, resolve

def _user_errors():
    from marsrm.data import DataError
    from marsrm.model import ModelError

    return (ConfigError, DataError, ModelError, FileNotFoundError)


@dataclasses.dataclass
class ExportConfig:
    """`marsrm export`: turn a head-mode model into a standard sequence-classification directory."""

    model: str = dataclasses.field(default="runs/train/model", metadata={"help": "head-mode model directory"})
    output: str = dataclasses.field(default="runs/export", metadata={"help": "directory for the standard model"})


def _commands():
    from marsrm import pipeline
    from marsrm.bon import BonConfig
    from marsrm.compare import CompareConfig
    from marsrm.loop import RunConfig
    from marsrm.demo import DemoConfig
    from marsrm.experiment import ExperimentConfig
    from marsrm.pool.command import AugmentConfig
    from marsrm.simulate import SimulateConfig

    return {
        "train": (pipeline.TrainConfig, run_train, "train a reward model on preference pairs"),
        "eval": (pipeline.EvalConfig, run_eval, "evaluate a saved reward model on preference pairs"),
        "augment": (AugmentConfig, run_augment, "build the paraphrase pool (n×n variants per base pair, filtered)"),
        "run": (RunConfig, run_loop, "MARS rounds with one strategy and one seed"),
        "compare": (CompareConfig, run_compare, "strategies side by side over seeds: paired intervals, plots, "
                    "report.md"),
        "demo": (DemoConfig, run_demo, "the main job on the embedded default data"),
        "export": (ExportConfig, run_export, "head-mode model → standard AutoModelForSequenceClassification directory"),
        "experiment": (ExperimentConfig, run_experiment, "the comparisons of docs/RESULTS.md: run what results/ "
                       "lacks, or rebuild its tables from results/"),
        "bon": (BonConfig, run_bon, "best of N: a policy's samples picked by each reward model, judged by a gold "
                "model"),
        "simulate": (SimulateConfig, run_simulate, "positive control: the MARS rounds on synthetic pairs with a known "
                     "reward, faithful vs inherited labels (about a minute on CPU)"),
    }


def run_train(config) -> None:
    from marsrm import pipeline

    results = pipeline.train(config)
    if "val" in results:
        print(pipeline.format_table(results["val"], "validation"))
    if "eval" in results:
        print(pipeline.format_table(results["eval"]))
    print(f"model saved to {os.path.join(config.output, 'model')}")


def run_demo(config) -> None:
    from marsrm.demo import demo

    demo(config)


def run_augment(config) -> None:
    from marsrm.pool.command import augment

    augment(config)


def run_loop(config) -> None:
    from marsrm import pipeline
    from marsrm.loop import run

    results = run(config)
    if "eval" in results:
        print(pipeline.format_table(results["eval"], f"held-out after {config.rounds} rounds of {config.strategy}"))
    print(f"run directory: {config.output}")


def run_compare(config) -> None:
    from marsrm.compare import compare

    compare(config)


def run_eval(config) -> None:
    from marsrm import pipeline

    pipeline.evaluate(config)


def run_experiment(config) -> None:
    from marsrm.experiment import experiment

    experiment(config)


def run_bon(config) -> None:
    from marsrm.bon import bon

    bon(config)


def run_simulate(config) -> None:
    from marsrm.simulate import simulate

    simulate(config)


def run_export(config) -> None:
    from marsrm.model import HeadRewardModel, ModelError, export_head_model, load_reward_model

    model = load_reward_model(config.model)
    if not isinstance(model, HeadRewardModel):
        raise ModelError(f"{config.model}: already a full-mode (standard) model directory; nothing to export")
    print(f"exported to {export_head_model(model, config.output)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="marsrm", description="Reward models trained with margin-aware data "
                                     "augmentation (MARS).")
    parser.add_argument("--version", action="version", version=f"marsrm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = _commands()
    for name, (cls, _, help_text) in commands.items():
        build_parser(cls, sub.add_parser(name, help=help_text, description=cls.__doc__))
    args = parser.parse_args(argv)
    cls, run, _ = commands[args.command]
    try:
        run(resolve(cls, args))
    except _user_errors() as err:
        print(f"marsrm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marsrm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
