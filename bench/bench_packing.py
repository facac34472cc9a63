"""Decoder reward-model training, pairs/s: marsrm packed vs marsrm plain vs TRL's RewardTrainer, side by side.

All three train the same seeded, freshly initialised SmolLM2-135M-Instruct `AutoModelForSequenceClassification`
(num_labels=1, distinct pad token) on the same helpful-base pairs and the same token ids (the backbone's chat
template; each pair cut once from the left of its prompt so that prompt + the longer response fits
`max_length`), with the same batch size, learning rate, schedule, warm-up, clipping, seed, precision and
dropout (off). Only the way a batch is computed differs:

- packed: `PackedExamples`: each pair one segment (prompt once, chosen, rejected) under a 4D attention mask,
  segments first-fit into rows of about `max_length` tokens (`marsrm.packing`).
- plain:  `TokenExamples`: chosen and rejected as two rows, padded to the batch's longest.
- trl:    `RewardTrainer` on the plain path's token ids (`chosen_ids`/`rejected_ids`), its own collator.

Reported per variant: pairs/s of the training loop (model load, tokenising and dataset preparation untimed),
token slots computed (rows × row length) against the physical floor (every real token once, the prompt once per
pair), attention slots (rows × row length², what a dense mask costs), and held-out accuracy after one epoch,
scored by the same scorer, with a paired bootstrap interval of packed − plain (and packed − trl). Also the
forward-only margin pass over the held-out pairs, packed vs plain.

    python examples/smollm2_backbone.py --output runs/smollm2-hf          # once: the backbone directory
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_packing.py --backbone runs/smollm2-hf
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_packing.py --backbone runs/smollm2-hf --quick   # a smoke test

Run the full benchmark with the machine to itself (a 135M model trains slowly on CPU cores).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_train import fresh_accelerate_state  # noqa: E402  (bench/bench_train.py)
from common import Meter, machine, train_with_trl  # noqa: E402  (bench/common.py)

TARGETS = {"packed vs trl": 1.6, "packed vs plain": 1.25, "token_slots_over_floor": 1.15}


class Slots:
    """Counts what the batches a loop computes cost: token slots, real tokens, attention slots."""

    def __init__(self):
        self.token_slots = self.real_tokens = self.attention_slots = self.rows = self.batches = 0
        self.longest_row = 0

    def add(self, input_ids: torch.Tensor, real_tokens: int) -> None:
        rows, width = input_ids.shape
        self.token_slots += rows * width
        self.attention_slots += rows * width * width
        self.real_tokens += real_tokens
        self.rows += rows
        self.batches += 1
        self.longest_row = max(self.longest_row, width)

    def as_dict(self, floor: int) -> dict:
        return {"token_slots": self.token_slots, "real_tokens": self.real_tokens, "floor_tokens": floor,
                "token_slots_over_floor": self.token_slots / max(floor, 1), "attention_slots": self.attention_slots,
                "rows": self.rows, "batches": self.batches, "mean_row_length": self.token_slots / max(self.rows, 1),
                "longest_row": self.longest_row}


def counted(examples, slots: Slots):
    """Wrap `examples.collate` on this instance so that every batch the loop computes is counted."""
    library_collate = examples.collate

    def collate(index):
        batch = library_collate(index)
        mask = batch["attention_mask"]
        real = int(mask.sum()) if mask.ndim == 2 else sum(len(examples.pairs[i]) for i in index)
        slots.add(batch["input_ids"], real)
        return batch

    examples.collate = collate
    return examples


def fresh_model(args):
    """The seeded, newly initialised reward model every variant starts from."""
    from marsrm.model import ModelSpec, new_full_model

    torch.manual_seed(args.seed)
    return new_full_model(ModelSpec(mode="full", backbone=args.backbone, max_length=args.max_length), dropout=False)


def optim_settings(args):
    from marsrm.train import OptimSettings

    return OptimSettings(epochs=1.0, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, seed=args.seed)


def run_marsrm(args, train, packed: bool):
    from marsrm.learners import token_examples
    from marsrm.train import make_accelerator, train_epochs

    model = fresh_model(args)
    slots = Slots()
    examples = counted(token_examples(model, train, packed=packed), slots)
    fresh_accelerate_state()
    accelerator = make_accelerator(args.mixed_precision)
    with Meter() as meter:
        summary = train_epochs(model.model, examples, optim_settings(args), accelerator=accelerator,
                               progress=False)
    model.model = accelerator.unwrap_model(model.model)
    return model, {"pairs": summary["pairs"], "steps": summary["steps"], "loop_s": summary["seconds"],
                   "pairs_per_s": summary["pairs"] / summary["seconds"], "call": meter.as_dict(), "slots": slots,
                   "mixed_precision": accelerator.mixed_precision}


def run_trl(args, train, workdir: str):
    from trl import RewardConfig

    from marsrm.learners import token_examples
    from marsrm.train import resolve_mixed_precision

    model = fresh_model(args)
    plain = token_examples(model, train, packed=False)
    optim = optim_settings(args)
    slots = Slots()

    fresh_accelerate_state()
    steps = math.ceil(len(train) / optim.batch_size)
    config = RewardConfig(
        output_dir=workdir, per_device_train_batch_size=optim.batch_size, num_train_epochs=1, learning_rate=optim.lr,
        lr_scheduler_type=optim.scheduler, weight_decay=optim.weight_decay,
        warmup_steps=int(optim.warmup_ratio * steps), max_grad_norm=optim.max_grad_norm, max_length=args.max_length,
        center_rewards_coefficient=None, seed=optim.seed, report_to="none", use_cpu=not torch.cuda.is_available(),
        eval_strategy="no", save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        bf16=resolve_mixed_precision(args.mixed_precision) == "bf16", gradient_checkpointing=False,
        disable_dropout=True)
    trainer, clock, meter = train_with_trl(
        model, config, plain.chosen_ids, plain.rejected_ids,
        on_batch=lambda batch, _: slots.add(batch["input_ids"], int(batch["attention_mask"].sum())))
    kept = len(trainer.train_dataset)
    return model, {"pairs": kept, "steps": trainer.state.global_step, "loop_s": clock.wall,
                   "pairs_per_s": kept / clock.wall, "call": meter.as_dict(), "slots": slots,
                   "mixed_precision": trainer.accelerator.mixed_precision}


def margin_pass(model, pairs, batch_size: int, mixed_precision: str) -> dict:
    """Forward-only margins over `pairs`, packed vs plain (the MARS loop's margin pass): seconds and agreement."""
    from marsrm.learners import token_examples
    from marsrm.train import make_accelerator

    accelerator = make_accelerator(mixed_precision)
    device = accelerator.device
    model.model.to(device).eval()
    result = {}
    for name, packed in (("packed", True), ("plain", False)):
        examples = token_examples(model, pairs, packed=packed)
        margins = []
        with Meter() as meter, torch.no_grad(), accelerator.autocast():
            for start in range(0, len(pairs), batch_size):
                index = np.arange(start, min(start + batch_size, len(pairs)))
                batch = {k: v.to(device) for k, v in examples.collate(index).items()}
                rewards = examples.forward(model.model, batch).float()
                margins.append((rewards[: len(index)] - rewards[len(index):]).cpu().numpy())
        result[name] = {"seconds": meter.wall, "pairs_per_s": len(pairs) / meter.wall,
                        "margins": np.concatenate(margins)}
    result["speedup"] = result["packed"]["pairs_per_s"] / result["plain"]["pairs_per_s"]
    result["max_margin_difference"] = float(np.abs(result["packed"]["margins"] - result["plain"]["margins"]).max())
    for name in ("packed", "plain"):
        del result[name]["margins"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backbone", default="runs/smollm2-hf",
                        help="SmolLM2-135M-Instruct as a model directory (examples/smollm2_backbone.py writes one)")
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument("--eval-pairs", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="packed,plain,trl", help="comma-separated: packed, plain, trl")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 16 train and 16 held-out pairs, max_length 128, batch 4")
    parser.add_argument("--output", default=None, help="JSON results (default: bench/results/packing[-quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_pairs, args.eval_pairs, args.max_length, args.batch_size = 16, 16, 128, 4
    output = Path(args.output or Path(__file__).parent / "results" / f"packing{'-quick' if args.quick else ''}.json")
    if not (Path(args.backbone) / "config.json").exists():
        parser.error(f"--backbone {args.backbone}: no model directory there; write one with "
                     f"`python examples/smollm2_backbone.py --output {args.backbone}`")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from marsrm import metrics
    from marsrm.learners import token_examples
    from marsrm.pipeline import DataSettings, load_split

    split, _ = load_split(DataSettings(data=args.data, train_size=args.train_pairs, eval_size=args.eval_pairs,
                                       seed=args.seed), echo=lambda line: None)
    probe = fresh_model(args)
    floor = sum(len(p) for p in token_examples(probe, split.train, packed=True).pairs)
    print(f"{len(split.train)} train pairs, {len(split.eval)} held out; {args.backbone}, max_length "
          f"{args.max_length}, batch {args.batch_size}, lr {args.lr}, seed {args.seed}; torch threads "
          f"{torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}; floor {floor} tokens")
    del probe

    runs, margins = {}, {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as workdir:
        for name in variants:
            print(f"training: {name} …", flush=True)
            if name in ("packed", "plain"):
                model, run = run_marsrm(args, split.train, packed=name == "packed")
            elif name == "trl":
                model, run = run_trl(args, split.train, str(Path(workdir) / "trl"))
            else:
                parser.error(f"--variants: unknown variant '{name}'")
            run["slots"] = run["slots"].as_dict(floor)
            chosen, rejected = model.score_pairs(split.eval)
            margins[name] = chosen - rejected
            run["eval_accuracy"] = metrics.pairwise_accuracy(margins[name])
            if name == "packed":
                run["margin_pass"] = margin_pass(model, split.eval, args.batch_size * 2, args.mixed_precision)
            runs[name] = run
            s = run["slots"]
            print(f"  {run['pairs_per_s']:.3f} pairs/s over {run['loop_s']:.1f} s; token slots "
                  f"{s['token_slots_over_floor']:.3f}× the floor, mean row {s['mean_row_length']:.0f} (longest "
                  f"{s['longest_row']}), attention slots {s['attention_slots']:.3g}; held-out accuracy "
                  f"{run['eval_accuracy']:.4f}", flush=True)
            del model

    comparisons = {}
    if "packed" in runs:
        for other in (name for name in runs if name != "packed"):
            paired = metrics.paired_bootstrap(margins["packed"], margins[other], n_resamples=2000, seed=args.seed)
            comparisons[f"packed vs {other}"] = {
                "throughput_ratio": runs["packed"]["pairs_per_s"] / runs[other]["pairs_per_s"],
                "attention_slot_ratio": runs["packed"]["slots"]["attention_slots"]
                / runs[other]["slots"]["attention_slots"],
                "accuracy_difference": {"value": paired.estimate, "low": paired.low, "high": paired.high,
                                        "n": paired.n}}
    print()
    print(f"{'variant':<8}{'pairs/s':>9}{'slots/floor':>13}{'mean row':>10}{'attention slots':>17}{'held-out acc':>14}")
    for name, run in runs.items():
        s = run["slots"]
        print(f"{name:<8}{run['pairs_per_s']:>9.3f}{s['token_slots_over_floor']:>13.3f}{s['mean_row_length']:>10.0f}"
              f"{s['attention_slots']:>17.4g}{run['eval_accuracy']:>14.4f}")
    for label, c in comparisons.items():
        d = c["accuracy_difference"]
        print(f"{label}: throughput ×{c['throughput_ratio']:.3f} (target ≥ {TARGETS.get(label, '—')}), attention "
              f"slots ×{c['attention_slot_ratio']:.3f}; accuracy difference {d['value']:+.4f} "
              f"[{d['low']:+.4f}, {d['high']:+.4f}] (paired bootstrap, 95%, n={d['n']})")
    if "packed" in runs:
        m = runs["packed"]["margin_pass"]
        print(f"margin pass (forward only, held-out pairs): packed ×{m['speedup']:.3f} plain's pairs/s; largest margin "
              f"difference {m['max_margin_difference']:.2e}")

    result = {"benchmark": "packing", "targets": TARGETS, "quick": args.quick,
              "settings": {"backbone": args.backbone, "data": args.data, "train_pairs": len(split.train),
                           "eval_pairs": len(split.eval), "max_length": args.max_length,
                           "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                           "mixed_precision": args.mixed_precision, "floor_tokens": floor},
              "machine": machine(), "runs": runs, "comparisons": comparisons,
              "command": " ".join([sys.executable, *sys.argv])}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
