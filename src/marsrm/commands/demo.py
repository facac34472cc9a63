"""`marsrm demo`: the whole pipeline on the embedded default, sized for a 2-core laptop.

1. A head-mode reward model on 1,000 HH-RLHF helpful-base pairs, evaluated on the rest of the split.
2. MARS end to end on the same 1,000 base pairs: a pool of lexical paraphrases (WordNet; `--mars.paraphraser
   local` has the local model, SmolLM2-135M-Instruct, write them instead), then `compare` of the main
   strategies over a few seeds, with report.md and its plots.

Why these sizes: in head mode a reward model needs about 1,000 base pairs before it beats the "longer response
wins" rule on helpful-base (100 pairs stay below it); the lexical pool of 1,000 pairs builds in under two
minutes on 2 cores, where a local-model pool of that size would take close to an hour (extrapolated). The
temperature is the scale-free one chosen on validation in docs/RESULTS.md §2 (τ = 0.5 standard deviations of
each round's margins), so `mars` leans its budget towards the low-margin pairs (in the demo the lowest-|Δ|
tenth gets 14% of it, against uniform's 10%) instead of handing every pair nearly the same share.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from marsrm.allocate import STRATEGIES
from marsrm.config import setting
from marsrm.commands.train import TrainConfig


@dataclass
class DemoMars:
    """The demo's second part, MARS end to end (`--mars.pairs`, or `mars: {pairs: …}` in YAML)."""

    run: bool = setting(True, "run the MARS part after the plain reward model (--no-mars.run: stop after it)")
    pairs: int = setting(1000, "base pairs for the MARS part (at 1,000, the same pairs the first part "
                         "trained on)", ge=1)
    paraphraser: str = setting("lexical", "who writes the pool: lexical (WordNet synonyms, under two minutes for "
                               "1,000 pairs) or local (SmolLM2-135M-Instruct; close to an hour for 1,000 pairs on "
                               "2 cores, so lower --mars.pairs with it)", choices=["lexical", "local"])
    n: int = setting(5, "paraphrases per response in the demo pool", ge=1)
    strategies: list[str] = setting(["none", "uniform", "west-of-n", "mars", "mars-signed"], "strategies compared",
                                    choices=list(STRATEGIES))
    seeds: int = setting(3, "seeds per strategy", ge=1)
    rounds: int = setting(3, "rounds", ge=1)
    budget: int = setting(2000, "synthetic pairs per round", ge=0)
    tau: float = setting(0.5, "temperature of mars and mars-signed, in units of each round's margin standard "
                         "deviation (chosen on validation, docs/RESULTS.md §2)", ge=0)


@dataclass
class DemoConfig(TrainConfig):
    """`marsrm demo`: head mode on 1,000 helpful-base pairs, then MARS end to end on a pool of the same pairs."""

    # settings that moved into the `mars` section; the old flat names (and `--no-mars`) still load, with a note
    RENAMED_SETTINGS: ClassVar[dict[str, str]] = {"mars": "mars.run", **{
        f"mars_{f.name}": f"mars.{f.name}" for f in dataclasses.fields(DemoMars) if f.name != "run"}}

    output: str = setting("runs/demo", "demo directory (train/, pool/, compare/)")
    overwrite: bool = setting(True, "replace the previous demo's runs (the pool's paraphrases are reused)")
    mars: DemoMars = setting(DemoMars(), "the MARS part")


def demo(config: DemoConfig, echo=print) -> dict:
    from marsrm.commands.augment import AugmentConfig, augment
    from marsrm.commands.compare import CompareConfig, compare
    from marsrm.commands.train import train
    from marsrm.pipeline import DataSettings

    out = Path(config.output)
    echo("== 1. a reward model on 1,000 helpful-base pairs (head mode) ==")
    trained = train(dataclasses.replace(config, output=str(out / "train")), echo=echo)
    results = {"train": trained}
    mars = config.mars
    if not mars.run:
        return results

    echo(f"\n== 2. MARS on {mars.pairs} base pairs: a {mars.paraphraser} pool, then the strategies side by side ==")
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(DataSettings)}
    data.update(train_size=mars.pairs, val_size=0)
    pool_dir = out / "pool"
    augment(AugmentConfig(**data, output=str(pool_dir), paraphraser=mars.paraphraser, n=mars.n,
                          targets="responses", progress=config.progress), echo=echo)
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
    shared.update(data)
    comparison = CompareConfig(**{**shared, "pool": str(pool_dir), "strategies": mars.strategies,
                                  "seeds": mars.seeds, "rounds": mars.rounds,
                                  "budget": mars.budget, "tau": mars.tau, "tau_scale": "std",
                                  "output": str(out / "compare"),
                                  "overwrite": config.overwrite, "progress": False})
    results["compare"] = compare(comparison, echo=echo)
    echo(f"\ndemo finished. The comparison's report, with its plots: {out / 'compare' / 'report.md'}; the reward "
         f"model of part 1: {out / 'train' / 'model'}")
    return results
