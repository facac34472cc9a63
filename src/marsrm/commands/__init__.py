"""The commands: each module holds one command's Config (settings groups composed, nested sections where a
command runs another) and its function `name(config, echo=print)`.

    train.py       marsrm train       one reward model from preference pairs
    eval.py        marsrm eval        a saved model scored on pairs, with intervals
    augment.py     marsrm augment     the paraphrase pool the rounds sample from
    run.py         marsrm run         the MARS rounds: one strategy, one seed, resumable
    compare.py     marsrm compare     strategies × seeds on one split, paired intervals, plots, report.md
    bon.py         marsrm bon         best-of-N judged by a gold model
    export.py      marsrm export      a head-mode model as a standard directory
    demo.py        marsrm demo        the main job on the embedded default data
    experiment.py  marsrm experiment  the comparisons of docs/RESULTS.md, recorded in results/
    simulate.py    marsrm simulate    the positive control on synthetic pairs

The library below (data, pool, loop, model, …) never imports from here. `COMMANDS` is what the command line
(`marsrm.cli`) builds its parser from.
"""
from __future__ import annotations

import importlib

# name: (module, Config class, function, one-line help)
COMMANDS = {
    "train": ("train", "TrainConfig", "train", "train a reward model on preference pairs"),
    "eval": ("eval", "EvalConfig", "evaluate", "evaluate a saved reward model on preference pairs"),
    "augment": ("augment", "AugmentConfig", "augment",
                "build the paraphrase pool (n×n variants per base pair, filtered)"),
    "run": ("run", "RunConfig", "run", "MARS rounds with one strategy and one seed"),
    "compare": ("compare", "CompareConfig", "compare",
                "strategies side by side over seeds: paired intervals, plots, report.md"),
    "demo": ("demo", "DemoConfig", "demo", "the main job on the embedded default data"),
    "export": ("export", "ExportConfig", "export",
               "head-mode model → a sequence-classification or sentence-transformers directory"),
    "experiment": ("experiment", "ExperimentConfig", "experiment",
                   "the comparisons of docs/RESULTS.md: run what results/ lacks, or rebuild its tables from results/"),
    "bon": ("bon", "BonConfig", "bon", "best of N: a policy's samples picked by each reward model, judged by a gold "
            "model"),
    "simulate": ("simulate", "SimulateConfig", "simulate", "positive control: the MARS rounds on synthetic pairs "
                 "with a known reward, faithful vs inherited labels (about a minute on CPU)"),
}


def command(name: str):
    """(Config class, function, help) of the command `name`, imported on first use."""
    module, config_name, function_name, help_text = COMMANDS[name]
    loaded = importlib.import_module(f"marsrm.commands.{module}")
    return getattr(loaded, config_name), getattr(loaded, function_name), help_text
