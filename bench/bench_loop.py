"""Loop overhead: margins + allocation + sampling against training, per round, and allocation at scale.

    .venv/bin/python bench/bench_loop.py            # both parts
    .venv/bin/python bench/bench_loop.py --skip-full

Part 1 times `allocate` + `sample_variants` for a 100,000-variant pool (4,000 base pairs × 25 variants,
budget 8,000) for every strategy. Part 2 runs `marsrm run --mode full` on real helpful-base pairs and reads
each round's `allocation_seconds` (margins on the base set + allocation + sampling) against
`train_seconds` from metrics.jsonl. Results go to bench/results/loop.json.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from marsrm import allocate as alloc

HERE = Path(__file__).resolve().parent


def allocation_at_scale(pairs: int = 4000, variants: int = 25, budget: int = 8000, repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    margins = rng.normal(size=pairs)
    sizes = np.full(pairs, variants)
    variant_margins = rng.normal(size=pairs * variants)
    out = {}
    for name, strategy in alloc.STRATEGIES.items():
        if not strategy.augments:
            continue
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            counts = alloc.allocate(name, margins, budget, rng)
            alloc.sample_variants(counts, sizes, rng, order=strategy.sampling_order,
                                  variant_margins=variant_margins if strategy.selects_by_variant_margin else None)
            best = min(best, time.perf_counter() - started)
        out[name] = best
    return out


def full_mode_rounds(base_pairs: int, budget: int, rounds: int) -> dict:
    from marsrm.commands.run import RunConfig, run
    from test_loop import DropoutPool  # the tests' word-dropout pool: cheap, and the loop does not care
    from marsrm.data import load_pairs
    from marsrm.io import read_metrics

    run_dir = Path(tempfile.mkdtemp()) / "full"
    config = RunConfig(mode="full", strategy="mars", data="hh-rlhf/helpful-base", train_size=base_pairs,
                       eval_size=200, rounds=rounds, budget=budget, max_length=128, batch_size=16,
                       output=str(run_dir), progress=False, n_resamples=100, round_resamples=50)
    run(config, pool=DropoutPool(load_pairs("hh-rlhf/helpful-base").pairs))
    records = read_metrics(run_dir, event="round")
    keys = ("allocation_seconds", "train_seconds", "curvature_seconds", "eval_seconds")
    return {"rounds": [{k: r[k] for k in keys} for r in records],
            "allocation_share_of_round": [r["allocation_seconds"] / (r["allocation_seconds"] + r["train_seconds"])
                                          for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--base-pairs", type=int, default=200)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {"load_average": os.getloadavg(), "allocation_plus_sampling_seconds_100k_pool": allocation_at_scale()}
    for name, seconds in results["allocation_plus_sampling_seconds_100k_pool"].items():
        print(f"allocation + sampling, 100,000-variant pool, {name:<12} {seconds * 1000:8.1f} ms")
    if not args.skip_full:
        results["full_mode"] = full_mode_rounds(args.base_pairs, args.budget, args.rounds)
        for i, (r, share) in enumerate(zip(results["full_mode"]["rounds"],
                                           results["full_mode"]["allocation_share_of_round"]), 1):
            print(f"full mode round {i}: margins+allocation+sampling {r['allocation_seconds']:.1f} s, "
                  f"training {r['train_seconds']:.1f} s -> {100 * share:.1f}% of the round "
                  f"(curvature {r['curvature_seconds']:.1f} s, evaluation {r['eval_seconds']:.1f} s, not counted)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "loop.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
