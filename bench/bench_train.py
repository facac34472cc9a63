"""Training throughput, pairs/s: `marsrm train --mode full` against TRL's `RewardTrainer`, side by side.

Both train the same freshly initialised MiniLM-L6 `AutoModelForSequenceClassification` (num_labels=1, identical
score-head initialisation) on the same helpful-base pairs, the same token ids (marsrm's HH formatting, LEFT
truncation at `max_length`), batch size, learning rate, schedule, warm-up steps, clipping, seed, precision and
dropout. Only the training loops differ:

- marsrm: `train_epochs` over `TokenExamples`: length-grouped batches, chosen+rejected stacked in one forward,
  padded to the longest sequence of the batch, fused AdamW.
- TRL: `RewardTrainer` (Hugging Face `Trainer`): random batches, chosen+rejected stacked in one forward
  (`DataCollatorForPreference`), padded to the longest sequence of the batch.

TRL gets the token ids as `chosen_ids`/`rejected_ids` (its "already tokenised" path). Given the texts instead, TRL
appends an extra EOS ([SEP] here) and DROPS every pair longer than `max_length` rather than truncating it, so the two
would not see the same data; the script counts how many pairs that path would drop.

Timed: the training loop only (per-step collate, forward, backward, clipping, optimizer and scheduler steps, each
library's per-step bookkeeping). Not timed: model load, tokenisation, TRL's dataset preparation, optimizer
construction. Held-out accuracy of both trained models comes from the same scorer (`FullRewardModel.score_pairs`).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py                # marsrm vs trl: ≈ 5 min on 2 idle cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py --repeats 2    # A B B A, so drift in load cancels
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train.py --variants marsrm,trl,trl-defaults,marsrm-fp32,trl-fp32

Variants:
  marsrm        `marsrm train --mode full` as it ships: bf16 autocast where the CPU/GPU runs bf16 natively
                (`--mixed-precision auto`), dropout off, fused AdamW
  trl           RewardTrainer with marsrm's settings: the same precision, dropout off, no gradient checkpointing
  trl-defaults  RewardTrainer as it ships (bf16 where available, gradient checkpointing, dropout off)
  marsrm-fp32   `--mixed-precision no --dropout`
  trl-fp32      RewardTrainer with bf16=False and dropout on, no gradient checkpointing
The first two are the comparison the target is about.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import Meter, machine, train_with_trl  # noqa: E402  (bench/common.py)

TARGET_RATIO = 1.3


class Padding:
    """Counts token slots (batch × width) against real tokens in the attention masks it sees."""

    def __init__(self):
        self.slots = self.real = self.batches = 0
        self.collate_s = 0.0
        self.rows: list[int] = []  # sequences per batch, to count the pairs after the first step

    def add(self, attention_mask: torch.Tensor, seconds: float = 0.0) -> None:
        self.slots += attention_mask.numel()
        self.real += int(attention_mask.sum())
        self.batches += 1
        self.collate_s += seconds
        self.rows.append(attention_mask.shape[0])

    def as_dict(self) -> dict:
        return {"token_slots": self.slots, "real_tokens": self.real, "batches": self.batches,
                "padding_fraction": 1 - self.real / max(self.slots, 1), "collate_s": self.collate_s}


# ---------------------------------------------------------------------------------------------
# Shared setup
# ---------------------------------------------------------------------------------------------

def make_config(args):
    from marsrm.commands.train import TrainConfig

    return TrainConfig(mode="full", data=args.data, train_size=args.train_pairs, eval_size=args.eval_pairs,
                       seed=args.seed, max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, epochs=1.0,
                       progress=False)


def fresh_model(config, dropout: bool = True):
    """What `marsrm train --mode full` builds: the seeded, newly initialised reward model."""
    from marsrm.model import ModelSpec, new_full_model
    from marsrm.runtime import resolve_backbone

    spec = ModelSpec(mode="full", backbone=resolve_backbone(config.backbone), max_length=config.max_length,
                     template=config.template)
    torch.manual_seed(config.seed)
    model = new_full_model(spec, dropout=dropout)
    model.tokenizer.eos_token = model.tokenizer.sep_token  # BERT has no EOS; TRL needs one (marsrm sets it too)
    return model


def trl_text_path_drops(tokenizer, pairs, max_length: int) -> int:
    """Pairs TRL's text path would drop: it appends EOS, tokenises without truncation, filters > max_length."""
    from marsrm.model import format_texts

    prompts = [p.prompt for p in pairs]
    counts = []
    for responses in ([p.chosen for p in pairs], [p.rejected for p in pairs]):
        texts = [t + tokenizer.eos_token for t in format_texts(tokenizer, prompts, responses)]
        counts.append(np.array([len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]))
    return int(((counts[0] > max_length) | (counts[1] > max_length)).sum())


# ---------------------------------------------------------------------------------------------
# The two trainers
# ---------------------------------------------------------------------------------------------

def fresh_accelerate_state() -> None:
    """Accelerate keeps one process-wide state (mixed precision included); each variant starts from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def run_marsrm(config, examples, mixed_precision: str | None = None,
               dropout: bool | None = None) -> tuple[torch.nn.Module, dict]:
    """`train_epochs` exactly as `marsrm train --mode full` calls it (the config's precision and dropout unless
    given)."""
    from marsrm.train import make_accelerator, train_epochs

    mixed_precision = config.mixed_precision if mixed_precision is None else mixed_precision
    dropout = config.dropout if dropout is None else dropout
    model = fresh_model(config, dropout=dropout)
    padding = Padding()
    library_collate = examples.collate
    step_starts = []

    def counting_collate(index):
        started = time.perf_counter()
        step_starts.append(started)
        batch = library_collate(index)
        padding.add(batch["attention_mask"], time.perf_counter() - started)
        return batch

    examples.collate = counting_collate  # on this instance only: counts what the loop really pads
    fresh_accelerate_state()
    accelerator = make_accelerator(mixed_precision)
    try:
        with Meter() as meter:
            summary = train_epochs(model.model, examples, config.optim(), accelerator=accelerator, progress=False)
            ended = time.perf_counter()
    finally:
        del examples.collate
    loop_s = summary["seconds"]
    after_first = None
    if len(step_starts) > 1:
        after_first = (summary["pairs"] - padding.rows[0] // 2) / (ended - step_starts[1])
    return model, {"pairs": summary["pairs"], "steps": summary["steps"], "loop_s": loop_s, "loop_cpu_s": meter.cpu,
                   "pairs_per_s": summary["pairs"] / loop_s, "pairs_per_s_after_first_step": after_first,
                   "call": meter.as_dict(), "pairs_per_cpu_s": summary["pairs"] / meter.cpu,
                   "padding": padding.as_dict(), "mixed_precision": accelerator.mixed_precision,
                   "autocast": bool(accelerator.native_amp), "dropout": dropout, "gradient_checkpointing": False,
                   "optimizer": "adamw_torch_fused"}


def run_trl(config, examples, workdir: str, *, settings: str = "marsrm") -> tuple[torch.nn.Module, dict]:
    """`trl.RewardTrainer` on the same token ids. `settings`: "marsrm" (marsrm's default precision, dropout off,
    no gradient checkpointing), "fp32" (bf16 off, dropout on, no checkpointing), "defaults" (TRL as it ships)."""
    from marsrm.train import resolve_mixed_precision

    from trl import RewardConfig

    model = fresh_model(config)
    optim = config.optim()
    steps = math.ceil(len(examples) / optim.batch_size)
    padding = Padding()

    fresh_accelerate_state()
    matched = {"defaults": {},
               "fp32": {"bf16": False, "gradient_checkpointing": False, "disable_dropout": False},
               "marsrm": {"bf16": resolve_mixed_precision(config.mixed_precision, cpu=True) == "bf16",
                          "gradient_checkpointing": False, "disable_dropout": not config.dropout}}[settings]
    args = RewardConfig(
        output_dir=workdir, per_device_train_batch_size=optim.batch_size, num_train_epochs=optim.epochs,
        learning_rate=optim.lr, lr_scheduler_type=optim.scheduler, weight_decay=optim.weight_decay,
        warmup_steps=int(optim.warmup_ratio * steps),  # marsrm's rounding (TRL's ratio path rounds up)
        max_grad_norm=optim.max_grad_norm, max_length=config.max_length, center_rewards_coefficient=None,
        seed=optim.seed, report_to="none", use_cpu=True, eval_strategy="no", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, **matched)
    trainer, clock, meter = train_with_trl(model, args, examples.chosen_ids, examples.rejected_ids,
                                           on_batch=lambda batch, seconds: padding.add(batch["attention_mask"], seconds))
    kept = len(trainer.train_dataset)
    ends = clock.step_ends
    after_first = (kept - padding.rows[0] // 2) / (ends[-1] - ends[0]) if len(ends) > 1 else None
    return model, {"pairs": kept, "steps": trainer.state.global_step, "loop_s": clock.wall, "loop_cpu_s": clock.cpu,
                   "pairs_per_s": kept / clock.wall, "pairs_per_s_after_first_step": after_first,
                   "call": meter.as_dict(), "pairs_per_cpu_s": kept / clock.cpu, "padding": padding.as_dict(),
                   "mixed_precision": trainer.accelerator.mixed_precision,
                   "autocast": bool(trainer.accelerator.native_amp), "bf16": bool(args.bf16),
                   "gradient_checkpointing": bool(args.gradient_checkpointing), "dropout": not args.disable_dropout,
                   "optimizer": str(args.optim), "warmup_steps": args.warmup_steps}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--train-pairs", type=int, default=400)
    parser.add_argument("--eval-pairs", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="marsrm,trl",
                        help="comma-separated, run in this order: marsrm, trl, trl-defaults, marsrm-fp32, trl-fp32")
    parser.add_argument("--repeats", type=int, default=1,
                        help="train each variant this many times, the order reversed every other time (A B B A …) "
                        "so drift in a shared machine's load cancels; throughput pools the repeats")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train.json"))
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from marsrm import metrics
    from marsrm.learners import token_examples
    from marsrm.pipeline import load_split

    config = make_config(args)
    config.validate()
    split, _ = load_split(config, echo=lambda line: None)
    probe = fresh_model(config)
    with Meter() as tokenising:
        examples = token_examples(probe, split.train)
    drops = trl_text_path_drops(probe.tokenizer, split.train, config.max_length)
    same_init = torch.equal(probe.model.classifier.weight, fresh_model(config).model.classifier.weight)
    print(f"{len(split.train)} train pairs, {len(split.eval)} held out; max_length {config.max_length}, batch "
          f"{args.batch_size}, lr {args.lr}, seed {args.seed}; torch threads {torch.get_num_threads()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"tokenising the train pairs (untimed in the loops): {tokenising.wall:.2f} s; TRL's text path would drop "
          f"{drops}/{len(split.train)} pairs longer than {config.max_length} tokens")

    # One untimed forward+backward first, so the first variant does not also pay the process's one-off start-up
    # (thread pool, oneDNN initialisation).
    warm = examples.collate(np.arange(min(len(examples), args.batch_size)))
    probe.model.train()
    probe.model(input_ids=warm["input_ids"], attention_mask=warm["attention_mask"]).logits.sum().backward()
    del probe

    runs, margins = {}, {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for name in variants if repeat % 2 == 0 else variants[::-1]:  # A B, then B A: drift cancels
                print(f"training: {name} (repeat {repeat + 1} of {args.repeats}) …", flush=True)
                if name == "marsrm":
                    model, run = run_marsrm(config, examples)
                elif name == "marsrm-fp32":
                    model, run = run_marsrm(config, examples, mixed_precision="no", dropout=True)
                elif name in {"trl", "trl-defaults", "trl-fp32"}:
                    model, run = run_trl(config, examples, str(Path(workdir) / f"{name}-{repeat}"),
                                         settings={"trl": "marsrm", "trl-defaults": "defaults",
                                                   "trl-fp32": "fp32"}[name])
                else:
                    parser.error(f"--variants: unknown variant '{name}'")
                print(f"  {run['pairs_per_s']:.3f} pairs/s over {run['loop_s']:.1f} s, padding "
                      f"{run['padding']['padding_fraction']:.1%}, load "
                      f"{run['call']['load_1min'][0]:.2f}→{run['call']['load_1min'][1]:.2f}", flush=True)
                timing = {key: run[key] for key in ("pairs", "loop_s", "loop_cpu_s", "pairs_per_s",
                                                    "pairs_per_s_after_first_step")}
                timing["load_1min"] = run["call"]["load_1min"]
                if repeat == 0:  # training is seeded: score the first model of each variant only
                    with Meter() as scoring:
                        chosen, rejected = model.score_pairs(split.eval)
                    margins[name] = chosen - rejected
                    run["eval_accuracy"] = metrics.pairwise_accuracy(margins[name])
                    run["eval_scoring_s"] = scoring.wall
                    print(f"  held-out accuracy {run['eval_accuracy']:.4f}", flush=True)
                    runs[name] = {**run, "repeats": []}
                runs[name]["repeats"].append(timing)
                del model
    for run in runs.values():  # pool the repeats
        repeats = run["repeats"]
        run["loop_s"] = sum(r["loop_s"] for r in repeats) / len(repeats)
        run["pairs_per_s"] = sum(r["pairs"] for r in repeats) / sum(r["loop_s"] for r in repeats)
        run["pairs_per_cpu_s"] = sum(r["pairs"] for r in repeats) / sum(r["loop_cpu_s"] for r in repeats)
        after = [r["pairs_per_s_after_first_step"] for r in repeats if r["pairs_per_s_after_first_step"]]
        run["pairs_per_s_after_first_step"] = float(np.mean(after)) if after else None

    base = "trl" if "trl" in runs else next(iter(runs))
    comparisons = {}
    for name, run in runs.items():
        if name == base:
            continue
        paired = metrics.paired_bootstrap(margins[name], margins[base], n_resamples=2000, seed=args.seed)
        comparisons[f"{name} vs {base}"] = {
            "throughput_ratio": run["pairs_per_s"] / runs[base]["pairs_per_s"],
            "cpu_throughput_ratio": run["pairs_per_cpu_s"] / runs[base]["pairs_per_cpu_s"],
            "throughput_ratio_after_first_step": (run["pairs_per_s_after_first_step"] or math.nan)
            / (runs[base]["pairs_per_s_after_first_step"] or math.nan),
            "accuracy_difference": {"value": paired.estimate, "low": paired.low, "high": paired.high,
                                    "share_better": paired.share_a_better, "n": paired.n}}

    # Where the time goes: if cost per token slot is the same, the ratio is the padding saved.
    real = runs[variants[0]]["padding"]["real_tokens"]
    for run in runs.values():
        run["slots_per_s"] = run["padding"]["token_slots"] / run["loop_s"]
    bound = {name: run["padding"]["token_slots"] / real for name, run in runs.items()}

    print()
    print(f"{'variant':<14}{'pairs/s':>9}{'after 1st':>10}{'pairs/CPU-s':>13}{'slots/s':>9}{'padding':>9}"
          f"{'collate s':>11}{'held-out acc':>14}   load (1 min)")
    for name, run in runs.items():
        print(f"{name:<14}{run['pairs_per_s']:>9.3f}{run['pairs_per_s_after_first_step'] or math.nan:>10.3f}"
              f"{run['pairs_per_cpu_s']:>13.3f}{run['slots_per_s']:>9.0f}"
              f"{run['padding']['padding_fraction']:>9.1%}{run['padding']['collate_s']:>11.3f}"
              f"{run['eval_accuracy']:>14.4f}   {run['call']['load_1min'][0]:.2f}→{run['call']['load_1min'][1]:.2f}")
    for label, comparison in comparisons.items():
        diff = comparison["accuracy_difference"]
        print(f"{label}: throughput ×{comparison['throughput_ratio']:.3f} (after the first step "
              f"×{comparison['throughput_ratio_after_first_step']:.3f}, per CPU-second "
              f"×{comparison['cpu_throughput_ratio']:.3f}; target ≥ {TARGET_RATIO}); accuracy difference "
              f"{diff['value']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] (paired bootstrap, 95%)")
    if base in bound:
        for name in runs:
            if name != base:
                print(f"padding bound: {base} computes {bound[base]:.3f}× the real tokens, {name} "
                      f"{bound[name]:.3f}×; at equal cost per token slot {name} can be at most "
                      f"×{bound[base] / bound[name]:.3f} faster "
                      f"(×{bound[base]:.3f} with zero padding)")

    result = {"benchmark": "train", "target": {"throughput_ratio": TARGET_RATIO, "accuracy": "equal"},
              "settings": {"data": args.data, "train_pairs": len(split.train), "eval_pairs": len(split.eval),
                           "max_length": config.max_length, "batch_size": args.batch_size, "lr": args.lr,
                           "epochs": 1, "seed": args.seed, "optim": vars(config.optim()),
                           "tokenising_s": tokenising.wall, "trl_text_path_would_drop": drops,
                           "identical_head_init": same_init},
              "machine": machine(), "runs": runs, "comparisons": comparisons, "padding_bound": bound,
              "command": " ".join([sys.executable, *sys.argv])}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
