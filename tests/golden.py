"""Golden outputs: a few seeded runs of each command on the 12 fixture pairs, reduced to their numbers.

`produce(directory)` runs them through the real command line (`marsrm.cli.main`) and returns
{name: {json path: number}}. tests/golden/outputs.json holds what it gave before a refactor;
tests/test_golden.py checks that the code still gives the same. Everything is pinned to fp32, so the numbers
do not depend on whether the CPU has native bf16. After a change that is meant to move results, record anew:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/golden.py
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "golden" / "outputs.json"
PAIRS = str(HERE / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
FIXTURES = HERE / "fixtures" / "data"
SMALL = ["--data", PAIRS, "--train-size", "8", "--eval-size", "4", "--max-length", "32", "--n-resamples", "20",
         "--no-progress"]
HEAD = [*SMALL, "--embed-dtype", "fp32"]
LOOP = ["--round-resamples", "10", "--rounds", "2", "--budget", "12"]
# Numbers that measure the machine, not the result.
VOLATILE = re.compile(r"second|elapsed|time|per_s|speed|started|pid|_at$|memory|bytes")


def numbers(value, prefix: str = "") -> dict:
    """{json path: number} for every number and boolean in `value`, volatile ones left out."""
    out = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if not VOLATILE.search(str(key)):
                out.update(numbers(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.update(numbers(item, f"{prefix}[{i}]"))
    elif isinstance(value, bool) or (isinstance(value, (int, float)) and value is not None):
        out[prefix] = value if isinstance(value, bool) or math.isfinite(value) else str(value)
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _digest(texts) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def _cli(*argv: str) -> None:
    from marsrm.cli import main

    rc = main(list(argv))
    if rc != 0:
        raise RuntimeError(f"marsrm {' '.join(argv)} exited {rc}")


def _data() -> dict:
    from marsrm.data import load_pairs, split_pairs

    out = {}
    for name, source in {"hh": FIXTURES / "hh-rlhf" / "helpful-base-test.jsonl",
                         "pku": FIXTURES / "pku-saferlhf" / "test.jsonl",
                         "ultrafeedback": FIXTURES / "ultrafeedback" / "test_prefs.jsonl",
                         "pairs": Path(PAIRS)}.items():
        loaded = load_pairs(str(source))
        split = split_pairs(loaded.pairs, train_size=0.5, seed=3)
        out[name] = {**numbers(loaded.report.to_dict(), "report"), "pairs": len(loaded.pairs),
                     "texts": _digest(t for p in loaded.pairs for t in (p.id, str(p.prompt), p.chosen, p.rejected)),
                     "split": _digest(p.id for p in split.train)}
    return out


def _margins(run_dir: Path) -> dict:
    return {f"eval_margins[{i}]": float(m) for i, m in enumerate(np.load(run_dir / "eval_margins.npy"))}


def produce(directory: str | Path) -> dict:
    """Run every golden command under `directory`; {name: {path: number}}."""
    root = Path(directory)
    out = {"data": _data()}

    _cli("train", *HEAD, "--epochs", "3", "--output", str(root / "train"))
    out["train"] = numbers(_json(root / "train" / "results.json"))

    _cli("eval", "--model", str(root / "train" / "model"), "--data", PAIRS, "--n-resamples", "20",
         "--output", str(root / "eval.json"))
    out["eval"] = numbers(_json(root / "eval.json"))

    _cli("train", *SMALL, "--mode", "full", "--epochs", "1", "--batch-size", "4", "--mixed-precision", "no",
         "--output", str(root / "full"))
    out["train-full"] = numbers(_json(root / "full" / "results.json"))

    _cli("augment", "--data", PAIRS, "--train-size", "8", "--paraphraser", "lexical", "--n", "2",
         "--targets", "responses", "--no-progress", "--output", str(root / "pool"))
    from marsrm.pool import open_pool

    pool = open_pool(root / "pool")
    manifest = _json(root / "pool" / "manifest.json")
    out["augment"] = {**numbers(manifest.get("report", {}), "report"),
                      "variants": _digest(t for pid in sorted(pool) for v in pool.variants(pid)
                                          for t in (v.id, v.chosen, v.rejected))}

    for strategy in ("mars", "mars-signed", "uniform", "west-of-n"):
        run_dir = root / f"run-{strategy}"
        _cli("run", *HEAD, *LOOP, "--strategy", strategy, "--pool", str(root / "pool"), "--epochs", "2",
             "--output", str(run_dir))
        rounds = {}
        for file in sorted((run_dir / "rounds").glob("*.json")):
            rounds.update(numbers(_json(file), file.stem))
        out[f"run-{strategy}"] = {**numbers(_json(run_dir / "results.json")), **_margins(run_dir), **rounds}

    _cli("compare", *HEAD, *LOOP, "--strategies", "none,uniform,mars", "--seeds", "2", "--workers", "1",
         "--pool", str(root / "pool"), "--epochs", "2", "--output", str(root / "compare"))
    out["compare"] = numbers(_json(root / "compare" / "summary.json"))

    _cli("simulate", "--seeds", "2", "--base-pairs", "20", "--held-out", "200", "--epsilons", "0.5",
         "--noises", "1", "--rounds", "2", "--budget", "40", "--workers", "1", "--output", str(root / "simulate"))
    out["simulate"] = numbers(_json(root / "simulate" / "results.json"))
    return out


# Interval ends of a ratio (mean / std of the margins) bootstrapped over 4 held-out pairs: a resample whose margins
# nearly agree divides by almost zero, so rounding that differs between CPUs moves them by ~1e-4 (seen between an
# AVX-512 and another machine on the same code). Compared to 1e-3.
ILL_CONDITIONED = ("margin_snr.low", "margin_snr.high")


def compare(expected: dict, got: dict, *, rel: float = 1e-4, atol: float = 1e-4) -> list[str]:
    """What differs between two `produce` outputs, one line each (numbers within rel/atol count as equal; the
    `ILL_CONDITIONED` ones within 1e-3)."""
    problems = []
    for name in sorted(set(expected) | set(got)):
        a, b = expected.get(name), got.get(name)
        if a is None or b is None:
            problems.append(f"{name}: {'missing now' if b is None else 'new'}")
            continue
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) or isinstance(y, dict):
                problems += [f"{name}.{line}" for line in compare({key: x or {}}, {key: y or {}}, rel=rel, atol=atol)]
            elif isinstance(x, float) and isinstance(y, (int, float)) and not isinstance(y, bool):
                loose = str(key).endswith(ILL_CONDITIONED)
                if not math.isclose(x, y, rel_tol=max(rel, 1e-3) if loose else rel, abs_tol=atol):
                    problems.append(f"{name}: {key}: {x} → {y}")
            elif x != y:
                problems.append(f"{name}: {key}: {x} → {y}")
    return problems


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = produce(tmp)
    OUTPUTS.parent.mkdir(exist_ok=True)
    OUTPUTS.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUTS} ({sum(len(v) for v in result.values())} numbers)", file=sys.stderr)
