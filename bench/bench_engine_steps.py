"""What limits the llama.cpp engine: the time of one decode step against the rows in it, per cache layout and
weight format.

Each configuration decodes the paraphrase prompt's shared prefix (the pool's system line, worked examples and
instruction) into stream 0, one text's prompt after it, copies that into R slot streams, then times decode steps
that carry one token for each of the R rows (the median of 10 steps after 2 warm-ups), as the engine's steps
do mid-call. If the step time grows with R at a fixed cost per row, the engine is compute-bound at that rate;
a fixed cost per step (weights read from memory, Python) would show as a rate rising with R.

Weight formats: those `--weights` offers (q8_0, f16) plus q4_0 and bf16, converted here with llama.cpp's
quantizer into a temporary directory.

It also checks, per cache layout, whether a row's logits depend on the rows decoded beside it: the last-token
logits of 36 prompts (six texts, each six times) decoded in one step, against each decoded alone.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engine_steps.py          # ≈ 2 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_generation import cpu_name  # noqa: E402

TEXT = "The cat sat on the mat and looked at the dog for a very long time."
TEXTS = ("The cat sat on the mat.", "Water the basil when the soil is dry.", "Dogs like walks.", "It rains in Spain.",
         "Open the window, please.", "My car is red.")


def convert(source: Path, weights: str, directory: Path) -> Path:
    """`source` converted to `weights` with llama.cpp's quantizer (the engine's own conversion for q8_0/f16)."""
    from marsrm.llamacpp import _llama

    llama = _llama()
    ftype = {"q8_0": llama.LLAMA_FTYPE_MOSTLY_Q8_0, "f16": llama.LLAMA_FTYPE_MOSTLY_F16,
             "bf16": llama.LLAMA_FTYPE_MOSTLY_BF16, "q4_0": llama.LLAMA_FTYPE_MOSTLY_Q4_0}[weights]
    target = directory / f"{source.stem}.{weights}.gguf"
    params = llama.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, len(os.sched_getaffinity(0))
    if llama.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not convert {source} to {weights}")
    return target


def step_times(path: Path, cache: str, rows: int, prefix: list[int], prompt: list[int], threads: int) -> dict:
    from marsrm.llamacpp import FIRST_SLOT, LlamaEngine, _llama

    llama = _llama()
    engine = LlamaEngine(path, weights="as-is", slots=rows, threads=threads, cache=cache)
    engine._context(len(prefix), len(prompt), 64, 1)
    llama.llama_memory_clear(engine.memory, True)
    engine._decode([(t, i, 0, False) for i, t in enumerate(prefix)])
    slots = [FIRST_SLOT + k for k in range(rows)]
    P = len(prefix)
    llama.llama_memory_seq_cp(engine.memory, 0, slots[0], -1, -1)
    started = time.perf_counter()
    engine._decode([(t, P + i, slots[0], False) for i, t in enumerate(prompt)])
    fill = time.perf_counter() - started
    for slot in slots[1:]:
        llama.llama_memory_seq_cp(engine.memory, slots[0], slot, -1, -1)
    times = []
    for k in range(12):
        started = time.perf_counter()
        engine._decode([(42, P + len(prompt) + k, slot, True) for slot in slots], step=True)
        times.append(time.perf_counter() - started)
    engine.close()
    ms = 1000 * float(np.median(times[2:]))
    return {"rows": rows, "ms_per_step": round(ms, 1), "tokens_per_s": round(rows / ms * 1000, 1),
            "fill_ms_per_token": round(1000 * fill / len(prompt), 2)}


def batch_dependence(path: Path, cache: str, prefix: list[int], prompts: list[list[int]], threads: int) -> float:
    """The largest |logit difference| between a prompt's next-token logits decoded in one step with all of
    `prompts` and decoded alone (0.0: a row does not depend on its neighbours)."""
    from marsrm.llamacpp import FIRST_SLOT, LlamaEngine, _llama

    llama = _llama()
    engine = LlamaEngine(path, weights="as-is", slots=len(prompts), threads=threads, cache=cache)

    def logits(chosen: list[int]) -> dict[int, np.ndarray]:
        engine._context(len(prefix), max(map(len, prompts)), 16, len(prompts))
        llama.llama_memory_clear(engine.memory, True)
        engine._decode([(t, i, 0, False) for i, t in enumerate(prefix)])
        P = len(prefix)
        for k, j in enumerate(chosen):
            llama.llama_memory_seq_cp(engine.memory, 0, FIRST_SLOT + k, -1, -1)
            engine._decode([(t, P + i, FIRST_SLOT + k, False) for i, t in enumerate(prompts[j])])
        out = engine._decode([(42, P + len(prompts[j]), FIRST_SLOT + k, True) for k, j in enumerate(chosen)],
                             step=True)  # as the engine's steps (a lone row gets its spare row beside it)
        return {j: out[FIRST_SLOT + k] for k, j in enumerate(chosen)}

    together = logits(list(range(len(prompts))))
    worst = max(float(np.abs(logits([j])[j] - together[j]).max()) for j in range(0, len(prompts), 5))
    engine.close()
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--weights", default="q8_0,q4_0,f16,bf16")
    parser.add_argument("--caches", default="per-row,shared")
    parser.add_argument("--rows", default="8,16,32,64")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--kernels", default="auto", help="llama.cpp's kernels: auto, portable or avx512-bf16")
    parser.add_argument("--output", default="runs/bench/engine-steps.json")
    args = parser.parse_args(argv)

    from marsrm.llamacpp import _llama, resolve_kernels

    kernels = resolve_kernels(args.kernels)
    _llama(kernels)  # loaded first, so every engine below runs these kernels

    from marsrm.io import atomic_write_json
    from marsrm.lm import smollm2_path
    from marsrm.pool.local import LocalParaphraser
    from marsrm.pool.paraphrase import Task

    paraphraser = LocalParaphraser()
    paraphraser.load()
    task = Task(TEXT, 0)
    prefix, prompt = paraphraser._prefix(task.kind)[1][0].tolist(), paraphraser._rows(task)
    prompts = [paraphraser._rows(Task(text, 0)) for text in TEXTS for _ in range(6)]
    paraphraser.close()
    results = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "threads": args.threads,
               "kernels": kernels,
               "prefix_tokens": len(prefix), "prompt_tokens": len(prompt), "runs": []}
    print(f"{results['cpu']}, {args.threads} threads, {kernels} kernels; prefix {len(prefix)} + prompt "
          f"{len(prompt)} tokens", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        for weights in args.weights.split(","):
            path = convert(smollm2_path(), weights, Path(directory))
            for cache in args.caches.split(","):
                for rows in map(int, args.rows.split(",")):
                    run = {"weights": weights, "cache": cache,
                           **step_times(path, cache, rows, prefix, prompt, args.threads)}
                    results["runs"].append(run)
                    print(f"{weights:>5} {cache:>8} {rows:3d} rows: {run['ms_per_step']:6.1f} ms a step, "
                          f"{run['tokens_per_s']:6.1f} tokens/s; prompt fill {run['fill_ms_per_token']} ms a token",
                          flush=True)
            if weights == "q8_0":
                results["batch_dependence"] = {cache: batch_dependence(path, cache, prefix, prompts, args.threads)
                                               for cache in args.caches.split(",")}
                print("largest |logit difference|, a row beside 35 others against alone: " +
                      ", ".join(f"{c} {d:.4f}" for c, d in results["batch_dependence"].items()), flush=True)
    atomic_write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
