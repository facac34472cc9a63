"""Write the gold judge's training pairs: every HH-RLHF pair whose prompt `marsrm bon` does not evaluate.

The evaluated prompts are the held-out part of the split the reward models under test were trained with
(the same --data, --train-size and --seed). All of them are excluded, not only the first --prompts, so the
prompt count of a later `marsrm bon` run can grow without touching the gold model's training data.

    python examples/gold_data.py --data hh-rlhf/helpful-base --train-size 1000 --output runs/gold-pairs.jsonl

With --exclude all, every prompt of --data is excluded, training pairs included: the judge of the label-flip
tables (bench/label_flips.py) must not have seen the pairs being augmented.
"""
from __future__ import annotations

import argparse

from marsrm.bon import held_out_prompts, prompt_key
from marsrm.commands.bon import BonConfig
from marsrm.data import HH_SUBSETS, load_pairs, save_pairs_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base", help="source of the evaluated prompts")
    parser.add_argument("--train-size", type=int, default=1000, help="training pairs of the models under test")
    parser.add_argument("--seed", type=int, default=0, help="seed of their split")
    parser.add_argument("--sources", default=",".join(f"hh-rlhf/{s}" for s in HH_SUBSETS),
                        help="comma-separated sources the gold model may train on")
    parser.add_argument("--exclude", choices=["held-out", "all"], default="held-out",
                        help="which prompts of --data to exclude: the held-out ones, or all (training ones too)")
    parser.add_argument("--output", default="runs/gold-pairs.jsonl")
    args = parser.parse_args(argv)

    if args.exclude == "all":
        evaluated = [(pair.id, pair.prompt) for pair in load_pairs(args.data).pairs]
    else:
        evaluated = held_out_prompts(BonConfig(data=args.data, train_size=args.train_size, seed=args.seed))
    keys = {prompt_key(prompt) for _, prompt in evaluated}
    kept, removed = [], 0
    for source in args.sources.split(","):
        for pair in load_pairs(source).pairs:
            if prompt_key(pair.prompt) in keys:
                removed += 1
            else:
                kept.append(pair)
    if not kept:
        print(f"gold_data: error: every pair of {args.sources} shares a prompt with {args.data}; nothing to write")
        return 2
    save_pairs_jsonl(kept, args.output)
    print(f"{len(keys)} prompts excluded ({removed} pairs removed); {len(kept)} pairs written "
          f"to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
