"""Paraphrase throughput of the `local` backend's transformers engine: batched generation against one text at a time.

Texts: the first `--texts` responses (chosen and rejected in turn) of helpful-base pairs that have 8–60 words,
i.e. chunks as the pool builder would hand them over. Each configuration paraphrases every text `--n` times
with `LocalParaphraser.paraphrase` (seeded sampling, the default decoding; the length cap scales with the text).
  single   batch_size = 1 and one text per call: one sequence at a time (the single-stream rate)
  batch B  batch_size = B rows (texts × n) per `generate` call
The rate is generated tokens (up to EOS, padding excluded) per wall-clock second; model loading and a warm-up
call are outside the timing. The 1-minute load average is printed at both ends: these machines are shared.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_paraphrase.py                          # ≈ 10 min on 2 idle cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_paraphrase.py --texts 8 --batch-sizes 1,16 --dtype fp32,bf16
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET = 3.0  # batching must reach at least 3× the single-stream rate


def sample_texts(data: str, count: int) -> list[str]:
    from marsrm.data import load_pairs

    texts = []
    for pair in load_pairs(data).pairs:
        for text in (pair.chosen, pair.rejected):
            if 8 <= len(text.split()) <= 60:
                texts.append(text)
        if len(texts) >= count:
            break
    return texts[:count]


def run(paraphraser, texts, n, one_at_a_time: bool) -> dict:
    tokens0 = paraphraser.tokens
    load0, wall = os.getloadavg()[0], time.perf_counter()
    outputs = []
    if one_at_a_time:
        for text in texts:
            outputs += paraphraser.paraphrase([text], n, seed=0)
    else:
        outputs = paraphraser.paraphrase(texts, n, seed=0)
    wall = time.perf_counter() - wall
    tokens = paraphraser.tokens - tokens0
    return {"seconds": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "outputs": outputs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--n", type=int, default=2, help="paraphrases per text")
    parser.add_argument("--batch-sizes", default="1,8,16,32", help="rows per generate call; 1 = single stream")
    parser.add_argument("--dtype", default="fp32", help="comma-separated compute dtypes to compare (fp32, bf16)")
    parser.add_argument("--model", default=None, help="local model (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--output", default="runs/bench/paraphrase.json")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from marsrm.io import atomic_write_json
    from marsrm.pool.local import LocalParaphraser

    hf_logging.set_verbosity_error()
    texts = sample_texts(args.data, args.texts)
    words = sum(len(t.split()) for t in texts)
    print(f"{len(texts)} texts ({words / len(texts):.0f} words on average) × n={args.n}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    results = {"texts": len(texts), "n": args.n, "mean_words": words / len(texts), "runs": {}}
    for dtype in [d.strip() for d in args.dtype.split(",") if d.strip()]:
        paraphraser = LocalParaphraser(model=args.model, dtype=dtype, engine="transformers")
        paraphraser.load()
        paraphraser.paraphrase(texts[:1], 1, seed=99)  # warm-up, outside the timing
        for size in [int(b) for b in args.batch_sizes.split(",")]:
            paraphraser.batch_size = size
            name = f"{dtype} {'single' if size == 1 else f'batch {size}'}"
            print(f"{name} …", flush=True)
            results["runs"][name] = run(paraphraser, texts, args.n, one_at_a_time=size == 1)
    print()
    print(f"{'run':<18}{'seconds':>9}{'tokens':>8}{'tok/s':>8}{'× single':>10}   load (1 min)")
    for name, r in results["runs"].items():
        single = results["runs"].get(f"{name.split()[0]} single")
        ratio = r["tokens_per_s"] / single["tokens_per_s"] if single else float("nan")
        r["vs_single"] = round(ratio, 2)
        print(f"{name:<18}{r['seconds']:>9.1f}{r['tokens']:>8}{r['tokens_per_s']:>8.1f}{ratio:>10.2f}   "
              f"{r['load_1min'][0]:.2f} → {r['load_1min'][1]:.2f}")
    best = max((r["vs_single"] for n, r in results["runs"].items() if "batch" in n), default=float("nan"))
    print(f"\nbest batched / single-stream: {best:.2f}× (target ≥ {TARGET}×: {'met' if best >= TARGET else 'NOT met'})")
    results["best_vs_single"], results["target"] = best, TARGET
    atomic_write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
