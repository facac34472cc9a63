"""Local generation engines side by side: the `local` paraphraser's tokens/s and label-filter kept share.

Every configuration paraphrases the same texts `--n` times with `LocalParaphraser.paraphrase` (the pool's prompt:
system line, worked examples, instruction; seeded sampling at the pool's defaults), after a warm-up call outside
the timing; the rate is generated tokens per wall-clock second. The kept share is the pool's label filter
(all-MiniLM-L6-v2 cosine ≥ 0.75, length band 0.5–2×) on those outputs: the same quality of paraphrase means a
kept share within a few points.

  transformers   today's `local` backend: static batches of 16 rows, its default dtype (bf16 where the CPU
                 has native bf16, else fp32)
  llama.cpp      continuous batching through llama-cpp-python, a KV cache of its own per row, the default
                 kernels, weights and slots: the AVX-512 BF16 build with BF16 weights and 64 slots where the
                 CPU runs it, else the portable (AVX2) build with Q8_0 weights and 32 slots
  llama.cpp:X    the same with weights X (q8_0, bf16, f16, as-is), kernels X (portable, avx512-bf16) or the cache
                 layout X (shared: one cache for all rows); several as llama.cpp:portable:q8_0

Each configuration runs in a fresh process of its own (a process loads one set of llama.cpp kernels).

`--busy` repeats each configuration with one CPU-bound process beside it (a busy loop in another process, as
a laptop running something else), for the "no worse than half the idle rate" target.

`--bon-prompts P` also draws best-of-N's policy samples — 16 per prompt for the first P held-out helpful-base
prompts (`marsrm bon`'s split: 1,000 train pairs, seed 0), 128 new tokens at most — with each engine into a
fresh sample cache, and gives the time for 215 prompts at that rate.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_generation.py                       # ≈ 10 min on 2 idle cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_generation.py --texts 24 --engines llama.cpp --busy
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_paraphrase import sample_texts  # noqa: E402  (same texts as the batching benchmark)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def engine_options(spec: str) -> dict:
    """{"engine": …, "weights": …, "kernels": …, "kv_cache": …} of a configuration such as
    "llama.cpp:portable:q8_0"."""
    from marsrm.llamacpp import CACHES, KERNELS, WEIGHTS

    engine, *options = spec.split(":")
    out = {"engine": engine}
    kinds = {**{w: "weights" for w in WEIGHTS}, **{k: "kernels" for k in KERNELS if k != "auto"},
             **{c: "kv_cache" for c in CACHES}}
    for option in options:
        if option not in kinds:
            raise SystemExit(f"--engines: '{option}' in '{spec}' is none of weights ({', '.join(WEIGHTS)}), kernels "
                             f"({', '.join(KERNELS[1:])}) or a cache layout ({', '.join(CACHES)})")
        out[kinds[option]] = option
    return out


def in_own_process(function, *args):
    """function(*args) in a fresh process (spawned, so that it loads its own llama.cpp kernels)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def build(spec: str, model: str | None):
    from marsrm.pool.local import LocalParaphraser

    return LocalParaphraser(model=model, **engine_options(spec))


def timed(paraphraser, texts, n) -> dict:
    engine = getattr(paraphraser, "engine", None)
    stats0 = dict(engine.stats) if engine is not None else None
    tokens0, wall = paraphraser.tokens, time.perf_counter()
    outputs = paraphraser.paraphrase(texts, n, seed=0)
    wall = time.perf_counter() - wall
    tokens = paraphraser.tokens - tokens0
    out = {"seconds": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2), "outputs": outputs}
    if stats0 is not None:  # llama.cpp: where the time went
        d = {k: engine.stats[k] - stats0[k] for k in stats0}
        steps = max(d["step_calls"], 1)
        out["engine"] = {"kernels": engine.kernels, "weights": engine.weights,
            "decode_seconds": round(d["decode_seconds"], 2),
            "steps": d["step_calls"], "step_seconds": round(d["step_seconds"], 2),
            "mean_rows_per_step": round(d["step_tokens"] / steps, 1),
            "ms_per_step": round(1000 * d["step_seconds"] / steps, 1),
            "fill_calls": d["decode_calls"] - d["step_calls"],
            "fill_tokens": d["tokens_in"] - d["step_tokens"],
            "fill_seconds": round(d["decode_seconds"] - d["step_seconds"], 2),
            "outside_decode_seconds": round(wall - d["decode_seconds"], 2),  # Python: sampling, bookkeeping
            "moves": d["moves"]}
    return out


def bon_sampling(args, specs) -> dict:
    """Seconds and tokens/s of 16 policy samples for each of the first `--bon-prompts` held-out prompts."""
    from marsrm.bon import held_out_prompts
    from marsrm.pipeline import DataSettings

    prompts = held_out_prompts(DataSettings(data=args.data, train_size=1000), args.bon_prompts, echo=lambda *_: None)
    out = {}
    for spec in specs:
        wall, tokens = in_own_process(bon_timed, spec, args.model, prompts)
        out[spec] = {"prompts": len(prompts), "samples": 16 * len(prompts), "seconds": round(wall, 1),
                     "tokens_per_s": round(tokens / wall, 1),
                     "minutes_for_215": round(wall / len(prompts) * 215 / 60, 1)}
        print(f"{spec:>18}: best-of-N {16 * len(prompts)} samples in {wall:.0f} s ({tokens / wall:.1f} tok/s); "
              f"215 prompts × 16 at this rate: {out[spec]['minutes_for_215']} min", flush=True)
    return out


def bon_timed(spec: str, model: str | None, prompts) -> tuple[float, int]:
    """(seconds, tokens) of 16 samples per prompt with one configuration, after a warm-up."""
    import tempfile

    from marsrm.bon import Policy, generate_samples

    policy = Policy(model or "smollm2", **engine_options(spec))
    policy.load()
    with tempfile.TemporaryDirectory() as directory:
        generate_samples(prompts[:1], 2, policy, directory, seed=99, echo=lambda *_: None)  # warm-up
    with tempfile.TemporaryDirectory() as directory:
        wall = time.perf_counter()
        generate_samples(prompts, 16, policy, directory, echo=lambda *_: None)
        wall = time.perf_counter() - wall
        tokens = sum(json.loads(line)["tokens"] for line in open(f"{directory}/samples.jsonl", encoding="utf-8"))
    return wall, tokens


def measure(spec: str, model: str | None, texts: list[str], n: int, busy: bool) -> dict:
    """One configuration: a warm-up call (and the weights' conversion) outside the timing, the timed call, and
    with `busy` the same call again beside one CPU-bound process."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    paraphraser = build(spec, model)
    paraphraser.load()
    paraphraser.paraphrase(texts[:2], 2, seed=99)
    run = timed(paraphraser, texts, n)
    if busy:
        stop = multiprocessing.Event()
        hog = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
        hog.start()
        time.sleep(1.0)
        run["busy"] = timed(paraphraser, texts, n)
        stop.set()
        hog.join()
        run["busy"].pop("outputs")
    if getattr(paraphraser, "engine", None) is not None:
        from marsrm.llamacpp import system_info

        run["system_info"] = system_info()
    paraphraser.close()
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--n", type=int, default=5, help="paraphrases per text (the pool's default)")
    parser.add_argument("--engines", default="transformers,llama.cpp", help="comma-separated configurations")
    parser.add_argument("--model", default=None, help="local model (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--busy", action="store_true", help="also run each beside one CPU-bound process")
    parser.add_argument("--bon-prompts", type=int, default=0, help="best-of-N: prompts × 16 samples (0 = skip)")
    parser.add_argument("--output", default="runs/bench/generation.json")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from marsrm.features import LazyEmbed
    from marsrm.io import atomic_write_json
    from marsrm.pool.filter import FilterSettings, count_reasons, judge
    from marsrm.runtime import DEFAULT_BACKBONE

    hf_logging.set_verbosity_error()
    texts = sample_texts(args.data, args.texts)
    embed = LazyEmbed(DEFAULT_BACKBONE, dtype="fp32")
    print(f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores; {len(texts)} texts × n={args.n}", flush=True)
    results = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "texts": len(texts), "n": args.n, "runs": {}}
    for spec in [s.strip() for s in args.engines.split(",") if s.strip()]:
        run = in_own_process(measure, spec, args.model, texts, args.n, args.busy)
        reasons, _ = judge(texts, run.pop("outputs"), FilterSettings(), embed)
        counts = count_reasons(reasons)
        run["kept_share"] = round(counts["kept"] / sum(counts.values()), 4)
        run["filter"] = counts
        results["runs"][spec] = run
        print(f"{spec:>18}: {run['tokens_per_s']:7.1f} tok/s ({run['tokens']} tokens, {run['seconds']} s), kept "
              f"{run['kept_share']:.1%}" + (f"; beside a busy process {run['busy']['tokens_per_s']:.1f} tok/s"
                                             if args.busy else ""), flush=True)
    if args.bon_prompts:
        results["bon"] = bon_sampling(args, results["runs"].keys())
    base = results["runs"].get("transformers")
    if base:
        for spec, run in results["runs"].items():
            run["speedup"] = round(run["tokens_per_s"] / base["tokens_per_s"], 2)
            run["kept_points"] = round(100 * (run["kept_share"] - base["kept_share"]), 1)
            print(f"{spec:>18}: ×{run['speedup']} transformers' rate, kept share {run['kept_points']:+.1f} points")
    atomic_write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
