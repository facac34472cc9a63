"""Head mode: embedding throughput through the cache against the plain fp32 backbone forward pass, same texts.

Texts: every helpful-base pair, chosen and rejected, formatted as marsrm formats them (HH transcript), in file
order (pair 1 chosen, pair 1 rejected, pair 2 chosen, …), `max_length` tokens with LEFT truncation.

  (a) plain fp32: `AutoModel` in fp32, the texts in their original order in batches of 64, each padded to its
      longest text, mean pooling — what a user would write. Tokenising is inside the timing, as it is in (b).
  (b) `Encoder(dtype="auto").embed` on an empty cache (`MARSRM_CACHE` = a fresh temporary directory): hashing,
      length-sorted batches, bf16 autocast where the CPU runs bf16 natively, writing the cache.
  (d) `Encoder(dtype="fp32").embed`, empty cache: (b) without bf16, to split the gain between sorting and bf16;
      it also fills the fp32 cache for the accuracy runs.
  (c) the (b) call again on all texts: on the same `Encoder`, and on a new `Encoder`, which reads the shards from
      disk as a second `marsrm train` run would.
(a), (b) and (d) run interleaved over `--chunks` chunks of whole batches, in rotating order, so that the load of a
shared machine drifting during the run falls on all three alike; each pass's time is its sum over the chunks
(`Encoder.embed` is called once per chunk, so it sorts within a chunk).

Then head-mode accuracy with fp32 against bf16 embeddings: `marsrm.commands.train.train` (what `marsrm train` runs),
`--mode head`, 1,000 train pairs, the rest held out, `--embed-dtype fp32` vs `--embed-dtype bf16`, per seed,
with a paired bootstrap interval of the accuracy difference on the same held-out pairs.
Model loading is outside every timing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_embed.py             # 17 min at load 6–9 on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_embed.py --seeds 0 --chunks 3
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
from common import Meter, machine  # noqa: E402  (bench/common.py)

TARGETS = {"speedup_vs_fp32": 1.7, "accuracy_gap_points": 0.5, "cache_speedup": 50.0}


class Totals:
    """Wall and CPU seconds summed over chunks, with the load average seen at each chunk's ends."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.loads: list[float] = []
        self.chunk_walls: list[float] = []

    def add(self, meter: Meter) -> None:
        self.wall += meter.wall
        self.cpu += meter.cpu
        self.loads += [meter.load_before, meter.load_after]
        self.chunk_walls.append(meter.wall)

    def as_dict(self, n: int) -> dict:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "texts_per_s": n / self.wall,
                "load_1min": [min(self.loads), max(self.loads)], "chunk_wall_s": self.chunk_walls}


class PlainFp32:
    """The naive loop: fp32 `AutoModel`, texts in the order given, batches padded to their longest, mean pooling."""

    def __init__(self, backbone: str, tokenizer, max_length: int, batch_size: int):
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(backbone, dtype=torch.float32).eval()
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        self.slots = self.real = 0

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        from marsrm.features import pool

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt")
            out.append(pool(self.model(**batch).last_hidden_state, batch["attention_mask"], "mean").numpy())
            self.slots += batch["attention_mask"].numel()
            self.real += int(batch["attention_mask"].sum())
        return np.concatenate(out)


def sorted_padding(tokenizer, chunks: list[list[str]], max_length: int, batch_size: int) -> float:
    """Padding fraction of `Encoder.encode`'s batches (each call sorts its texts by token count)."""
    slots = real = 0
    for texts in chunks:
        lengths = np.sort([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
        real += int(lengths.sum())
        slots += sum(int(lengths[i:i + batch_size].max()) * len(lengths[i:i + batch_size])
                     for i in range(0, len(lengths), batch_size))
    return 1 - real / slots


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def head_accuracy(args, seed: int, embed_dtype: str, workdir: Path) -> tuple[dict, np.ndarray]:
    """`marsrm train --mode head --embed-dtype X` on the pipeline; held-out margins from the saved model."""
    from marsrm.model import load_reward_model
    from marsrm.commands.train import TrainConfig, train
    from marsrm.pipeline import load_split

    config = TrainConfig(mode="head", data=args.data, train_size=args.train_pairs, seed=seed,
                         max_length=args.max_length, embed_dtype=embed_dtype, progress=False,
                         output=str(workdir / f"head-{embed_dtype}-seed{seed}"), overwrite=True)
    with Meter() as meter:
        results = train(config, echo=lambda line: None)
    split, _ = load_split(config, echo=lambda line: None)
    chosen, rejected = load_reward_model(Path(config.output) / "model").score_pairs(split.eval)
    margins = chosen - rejected
    return {"accuracy": results["eval"]["accuracy"], "held_out": len(split.eval), "train_pairs": len(split.train),
            "seconds": meter.wall}, margins


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-pairs", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs (a quick check)")
    parser.add_argument("--chunks", type=int, default=6, help="interleave the cold passes over this many chunks")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds for the accuracy comparison")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "embed.json"))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="marsrm-bench-embed-"))
    os.environ["MARSRM_CACHE"] = str(workdir / "cache")  # a fresh, empty cache for this run only

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from marsrm import metrics
    from marsrm.data import load_pairs
    from marsrm.features import Encoder
    from marsrm.model import format_texts
    from marsrm.runtime import load_tokenizer, resolve_backbone

    backbone = resolve_backbone(None)
    tokenizer = load_tokenizer(backbone)
    pairs = load_pairs(args.data).pairs[: args.limit]
    texts = []
    for pair in pairs:
        texts.extend(format_texts(tokenizer, [pair.prompt] * 2, [pair.chosen, pair.rejected]))
    n = len(texts)
    print(f"{len(pairs)} pairs → {n} texts, max_length {args.max_length}, batch {args.batch_size}; "
          f"torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}", flush=True)

    # The three cold passes are interleaved chunk by chunk, in rotating order, so that drift in the load of a
    # shared machine falls on all three alike. Chunks are whole batches of the naive loop.
    plain_fp32 = PlainFp32(backbone, tokenizer, args.max_length, args.batch_size)
    encoder = Encoder(backbone, max_length=args.max_length, dtype="auto")
    fp32_encoder = Encoder(backbone, max_length=args.max_length, dtype="fp32")
    encoder.model, fp32_encoder.model  # noqa: B018 - load the weights outside the timing
    passes = {"plain_fp32": plain_fp32, "encoder_cold": lambda t: encoder.embed(t, batch_size=args.batch_size),
              "encoder_cold_fp32": lambda t: fp32_encoder.embed(t, batch_size=args.batch_size)}
    size = args.batch_size * math.ceil(math.ceil(n / args.batch_size) / args.chunks)
    chunks = [texts[start:start + size] for start in range(0, n, size)]
    totals = {name: Totals() for name in passes}
    vectors = {name: [] for name in passes}
    print(f"(a) plain fp32, (b) Encoder(dtype='auto').embed and (d) Encoder(dtype='fp32').embed on an empty cache, "
          f"interleaved over {len(chunks)} chunks …", flush=True)
    names = list(passes)
    for i, chunk in enumerate(chunks):
        for name in names[i % 3:] + names[: i % 3]:
            with Meter() as meter:
                vectors[name].append(passes[name](chunk))
            totals[name].add(meter)
        print(f"  chunk {i + 1}/{len(chunks)}: " + ", ".join(f"{name} {totals[name].chunk_walls[-1]:.1f} s"
                                                         for name in names), flush=True)
    runs = {name: totals[name].as_dict(n) for name in names}
    plain, first, sorted_fp32 = (np.concatenate(vectors[name]) for name in names)
    runs["plain_fp32"]["padding_fraction"] = 1 - plain_fp32.real / plain_fp32.slots
    runs["encoder_cold"]["dtype"] = encoder.dtype
    runs["encoder_cold"]["padding_fraction"] = sorted_padding(tokenizer, chunks, args.max_length, args.batch_size)
    runs["encoder_cold_fp32"]["padding_fraction"] = runs["encoder_cold"]["padding_fraction"]

    print("(c) the same call again on all texts (cache hit) …", flush=True)
    with Meter() as meter:
        again = encoder.embed(texts, batch_size=args.batch_size)
    runs["cache_hit_same_encoder"] = meter.as_dict(n)
    reopened = Encoder(backbone, max_length=args.max_length, dtype="auto")
    with Meter() as meter:
        from_disk = reopened.embed(texts, batch_size=args.batch_size)
    runs["cache_hit_new_encoder"] = meter.as_dict(n)
    assert np.array_equal(again, first) and np.array_equal(from_disk, first), "cache returned different vectors"

    agreement = {"cosine_auto_vs_plain_fp32": {"min": float(cosine(first, plain).min()),
                                               "mean": float(cosine(first, plain).mean())},
                 "max_abs_sorted_fp32_vs_plain_fp32": float(np.abs(sorted_fp32 - plain).max())}

    base = runs["plain_fp32"]["wall_s"]
    ratios = {"speedup_vs_fp32": base / runs["encoder_cold"]["wall_s"],
              "speedup_sorting_only": base / runs["encoder_cold_fp32"]["wall_s"],
              "speedup_vs_fp32_per_chunk": [p / e for p, e in zip(runs["plain_fp32"]["chunk_wall_s"],
                                                                   runs["encoder_cold"]["chunk_wall_s"])],
              "cache_speedup_same_encoder": runs["encoder_cold"]["wall_s"] / runs["cache_hit_same_encoder"]["wall_s"],
              "cache_speedup_new_encoder": runs["encoder_cold"]["wall_s"] / runs["cache_hit_new_encoder"]["wall_s"]}

    print("head-mode accuracy, fp32 vs bf16 embeddings …", flush=True)
    accuracy = {}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for seed in seeds:
        fp32, margins_fp32 = head_accuracy(args, seed, "fp32", workdir)
        bf16, margins_bf16 = head_accuracy(args, seed, "bf16", workdir)
        paired = metrics.paired_bootstrap(margins_bf16, margins_fp32, n_resamples=2000, seed=seed)
        accuracy[str(seed)] = {"fp32": fp32, "bf16": bf16, "bf16_minus_fp32": {
            "value": paired.estimate, "low": paired.low, "high": paired.high, "n": paired.n},
            "same_sign_share": float(np.mean(np.sign(margins_bf16) == np.sign(margins_fp32)))}
    gaps = [a["bf16_minus_fp32"]["value"] for a in accuracy.values()]

    print()
    print(f"{'run':<36}{'seconds':>9}{'texts/s':>10}{'padding':>9}   load (1 min)")
    for name, run in runs.items():
        padding = f"{run['padding_fraction']:.1%}" if "padding_fraction" in run else ""
        print(f"{name:<36}{run['wall_s']:>9.3f}{run['texts_per_s']:>10.1f}{padding:>9}   "
              f"{run['load_1min'][0]:.2f}→{run['load_1min'][1]:.2f}")
    print(f"Encoder '{encoder.dtype}' vs plain fp32: ×{ratios['speedup_vs_fp32']:.2f} (target ≥ "
          f"{TARGETS['speedup_vs_fp32']}; per chunk ×{min(ratios['speedup_vs_fp32_per_chunk']):.2f}–"
          f"×{max(ratios['speedup_vs_fp32_per_chunk']):.2f}); sorting alone (fp32): "
          f"×{ratios['speedup_sorting_only']:.2f}")
    print(f"cache hit vs first run: ×{ratios['cache_speedup_same_encoder']:.0f} same Encoder, "
          f"×{ratios['cache_speedup_new_encoder']:.0f} new Encoder (target ≥ {TARGETS['cache_speedup']:.0f})")
    print(f"embeddings: cosine(auto, plain fp32) min {agreement['cosine_auto_vs_plain_fp32']['min']:.5f}, "
          f"mean {agreement['cosine_auto_vs_plain_fp32']['mean']:.6f}")
    for seed, result in accuracy.items():
        diff = result["bf16_minus_fp32"]
        print(f"seed {seed}: held-out accuracy fp32 {result['fp32']['accuracy']['value']:.4f}, bf16 "
              f"{result['bf16']['accuracy']['value']:.4f}; bf16 − fp32 = {100 * diff['value']:+.2f} points "
              f"[{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}] (n={diff['n']}, target |gap| ≤ "
              f"{TARGETS['accuracy_gap_points']}); same sign {result['same_sign_share']:.1%}")

    result = {"benchmark": "embed", "targets": TARGETS, "texts": n, "pairs": len(pairs),
              "settings": {"data": args.data, "max_length": args.max_length, "batch_size": args.batch_size,
                           "train_pairs": args.train_pairs, "seeds": seeds},
              "machine": machine(), "runs": runs, "ratios": ratios, "agreement": agreement, "accuracy": accuracy,
              "accuracy_gap_points": {"mean": 100 * float(np.mean(gaps)), "max_abs": 100 * float(np.max(np.abs(gaps)))}
              if gaps else None,
              "command": " ".join([sys.executable, *sys.argv])}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
