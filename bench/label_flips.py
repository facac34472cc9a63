"""Label flips on real data: does MARS spend its budget on noisier labels?

A judge (a reward model NOT trained on the augmented pairs) scores every base pair and every variant of a pool;
a variant is flipped when the judge's margin sign on it differs from its sign on the source pair. Read against a
recorded comparison (`results/<experiment>/`: each run's per-round margins and sampled variants), this writes

- the flip rate by decile of the source pair's margin under the model being trained (round 1 and the last round,
  by |Δ| and by signed Δ; the `uniform` runs' models, averaged over seeds), and
- the flip rate of the variants each strategy sampled, weighted by its budget (mean over rounds and seeds),

into `<output>/flips.json` and `<output>/table.md`.

    python bench/label_flips.py --judge runs/flip-judge/model --record results/head-paper/helpful-base \
        --pool runs/experiments/pools/helpful-base-lexical --output results/flips/helpful-base-lexical
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from marsrm import flips as fl
from marsrm.commands.compare import CompareConfig
from marsrm.config import from_mapping
from marsrm.io import atomic_write_json, atomic_write_text
from marsrm.loop import open_base_pool
from marsrm.metrics import seed_interval
from marsrm.model import load_reward_model
from marsrm.pipeline import load_split


def round_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "rounds").glob("round-*.npz"), key=lambda p: int(p.stem.split("-")[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", required=True, help="reward model directory of the judge")
    parser.add_argument("--record", required=True, help="recorded comparison: results/<experiment>")
    parser.add_argument("--pool", required=True, help="the pool directory the comparison sampled from")
    parser.add_argument("--output", required=True, help="where flips.json and table.md go")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    record = Path(args.record)
    values = yaml.safe_load((record / "config.yaml").read_text())
    values.update(pool=args.pool, record=str(record), progress=False)
    config = from_mapping(CompareConfig, values, origin=str(record / "config.yaml"))
    split, _ = load_split(config, echo=lambda *_: None)
    base = split.train
    pool = open_base_pool(config, base)
    judge = load_reward_model(args.judge)

    chosen, rejected = judge.score_pairs(base, batch_size=args.batch_size)
    judge_source = chosen - rejected
    judge_variants = np.concatenate([np.subtract(*judge.score_pairs(chunk, batch_size=args.batch_size))
                                     for chunk in pool.chunks()])
    flips = fl.flipped(judge_source, judge_variants, pool.sizes)
    result = {"judge": args.judge, "record": str(record), "pool": args.pool, "base_pairs": len(base),
              "variants": int(pool.sizes.sum()), "flip_rate": float(flips.mean()),
              "judge_source_accuracy": float(np.mean(judge_source > 0)), "deciles": {}, "sampled": {}}

    rounds = {}
    for strategy in config.strategies:
        for k in range(config.seeds):
            files = round_files(record / strategy / f"seed-{config.seed + k}")
            rounds.setdefault(strategy, []).append([np.load(f) for f in files])
    reference = "uniform" if "uniform" in rounds else config.strategies[0]
    for when, index in (("round 1", 0), ("last round", -1)):
        for signed in (False, True):
            per_seed = [fl.by_decile(run[index]["margins"], flips, pool.sizes, signed=signed)
                        for run in rounds[reference]]
            rows = [{**per_seed[0][d], "flip_rate": float(np.mean([s[d]["flip_rate"] for s in per_seed])),
                     "margin_low": float(np.mean([s[d]["margin_low"] for s in per_seed])),
                     "margin_high": float(np.mean([s[d]["margin_high"] for s in per_seed]))} for d in range(10)]
            result["deciles"][f"{when}, {'signed Δ' if signed else '|Δ|'}"] = rows
    for strategy, runs in rounds.items():
        rates = [np.mean([r for r in (fl.sampled_flip_rate(flips, pool.sizes, npz["pair_index"],
                                                           npz["variant_index"]) for npz in run) if r is not None])
                 if any(len(npz["pair_index"]) for npz in run) else None for run in runs]
        if any(r is not None for r in rates):
            result["sampled"][strategy] = seed_interval([r for r in rates if r is not None], bounds=(0.0, 1.0))

    out = Path(args.output)
    atomic_write_json(out / "flips.json", result)
    atomic_write_text(out / "table.md", table(result, reference))
    print(table(result, reference))
    return 0


def table(result: dict, reference: str) -> str:
    lines = [f"{result['variants']} variants of {result['base_pairs']} base pairs; judge `{result['judge']}` ranks "
             f"{result['judge_source_accuracy']:.3f} of the source pairs as labelled; overall flip rate "
             f"{result['flip_rate']:.4f}.", "",
             f"Flip rate by decile of the source pair's margin under the `{reference}` model (mean over seeds; "
             "decile 1 = lowest):", "",
             "| decile | " + " | ".join(result["deciles"]) + " |", "|---|" + "---|" * len(result["deciles"])]
    for d in range(10):
        lines.append(f"| {d + 1} | " + " | ".join(f"{rows[d]['flip_rate']:.4f}" for rows in result["deciles"].values())
                     + " |")
    lines += ["", "Flip rate of the variants each strategy trained on (budget-weighted; mean over rounds, "
              "95% t-interval over seeds):", "", "| strategy | flip rate |", "|---|---|"]
    for strategy, rate in result["sampled"].items():
        lines.append(f"| {strategy} | {rate['mean']:.4f} [{rate['low']:.4f}, {rate['high']:.4f}] |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
