"""Hostile inputs, tallied: every case of each class of docs/RELIABILITY.md's "Never crash on a user's mistake",
tried through the real command line (`marsrm.cli.main`, in this process), and counted by how it ended.

For each case: the exit status, whether stderr held exactly one line (`marsrm CMD: error: …`), and whether a
finished run that the case pointed `--output` at (with `--overwrite`) is byte-identical afterwards.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/hostile_inputs.py      # → bench/results/hostile.json

Classes: settings (every setting of every command, invalid values from its declared type and bounds, in a YAML
file and as a flag); model directories (every malformed directory of tests/test_model_dirs.py, through
`marsrm eval`); files, text and the command line (data paths, text the tokenizers cannot encode, mapped
columns, YAML, argparse, a full disk); the error boundary's other exits (interrupt → 130, a bug → 1).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import shutil
import signal
import sys
import tempfile
import time
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import yaml  # noqa: E402

from marsrm import cli  # noqa: E402

PAIRS = str(HERE.parent / "tests" / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
SMALL = ["--data", PAIRS, "--train-size", "8", "--eval-size", "4", "--max-length", "32", "--n-resamples", "20",
         "--no-progress", "--embed-dtype", "fp32"]


def tree(root: Path) -> str:
    """One hash of every file under `root` (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _TookTooLong(BaseException):
    """A case that ran for LIMIT_S instead of being refused (an invalid setting that started the work)."""


LIMIT_S = 30


def _stop(signum, frame):
    raise _TookTooLong


def attempt(argv: list[str], limit_s: int = LIMIT_S) -> dict:
    """Run `marsrm ARGV` here, for at most `limit_s` seconds; its exit status and what it printed to stderr."""
    err = io.StringIO()
    signal.signal(signal.SIGALRM, _stop)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        signal.alarm(limit_s)
        try:
            rc = cli.main(argv)
        except SystemExit as stop:  # not expected: main returns its status
            rc = f"SystemExit({stop.code})"
        except _TookTooLong:
            rc = f"still running after {limit_s} s"
        except BaseException as escaped:  # noqa: BLE001 - a traceback is what this script counts
            rc = f"escaped {type(escaped).__name__}"
        finally:
            signal.alarm(0)
    return {"rc": rc, "stderr": err.getvalue()}


def verdict(result: dict, command: str, want: int = 2) -> str:
    """"ok" when the case ended as wanted: for a user error, its message is one line, the last on stderr (what a
    command printed before it failed, such as a progress bar, may come first), and no traceback."""
    lines = result["stderr"].strip().splitlines()
    if result["rc"] != want:
        return f"exit {result['rc']}"
    if "Traceback" in result["stderr"]:
        return "traceback"
    if want == 2 and not (lines and lines[-1].startswith(f"marsrm {command}: error:")):
        return f"ended with {lines[-1] if lines else 'nothing'!r}"
    return "ok"


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

def invalid_examples(f, kind) -> list:
    """Deterministic values that field `f` (of declared `kind`) must refuse."""
    from marsrm.config import _BOUNDS

    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return [[v] for v in invalid_examples(f, item)[:3]] + [{"a": 1}]
    junk = [[1, 2], {"a": 1}]
    bounds = {key: f.metadata[key] for key in _BOUNDS if f.metadata.get(key) is not None}
    if kind is bool:
        return ["maybe", 2, *junk]
    if kind is int:
        outside = [b - 1 for k, b in bounds.items() if k == "ge"] + [b for k, b in bounds.items() if k in ("gt", "lt")]
        outside += [b + 1 for k, b in bounds.items() if k == "le"]
        return [16.9, True, "many", *junk, *outside]
    if kind is float:
        outside = [b - 1.5 for k, b in bounds.items() if k in ("ge", "gt")] + [b for k, b in bounds.items() if k == "gt"]
        outside += [b + 1.5 for k, b in bounds.items() if k in ("le", "lt")] + [b for k, b in bounds.items() if k == "lt"]
        return [math.nan, math.inf, -math.inf, "fast", True, *junk, *outside]
    if kind is str:
        return [True, *junk, *(["no-such-choice"] if f.metadata.get("choices") else [])]
    return []


def settings_cases(tmp: Path, runs: dict) -> list[dict]:
    from marsrm.config import leaf_settings

    cases = []
    for command, (cls, _, _) in cli._commands().items():
        names = {f.name for f in dataclasses.fields(cls)}
        for setting_name, f, kind, _ in leaf_settings(cls):
            for value in invalid_examples(f, kind):
                base = {"data": PAIRS} if "data" in names and setting_name != "data" else {}
                target = runs.get(command)
                if target is not None and setting_name not in ("output", "overwrite"):
                    base.update(output=str(target), overwrite=True)
                elif "output" in names and setting_name != "output":
                    base["output"] = str(tmp / "out")
                for name in ("results", "runs"):  # `marsrm experiment` writes there
                    if name in names and setting_name != name:
                        base[name] = str(tmp / name)
                config = tmp / "settings" / f"{len(cases)}.yaml"
                config.parent.mkdir(exist_ok=True)
                config.write_text(yaml.safe_dump({**base, setting_name: value}))
                cases.append({"class": "settings", "command": command, "case": f"{setting_name}={value!r} (YAML)",
                              "argv": [command, "--config", str(config)], "guards": target and command})
                typed = (kind in (int, float) and not isinstance(value, (list, dict))) or (
                    kind is str and f.metadata.get("choices") and isinstance(value, str))
                if typed:
                    flags = [f"--{k.replace('_', '-')}={v}" for k, v in base.items() if k != "overwrite"]
                    flags += ["--overwrite"] if "overwrite" in base else []
                    cases.append({"class": "settings", "command": command, "case": f"{setting_name}={value!r} (flag)",
                                  "argv": [command, *flags, f"--{setting_name.replace('_', '-')}={value}"],
                                  "guards": target and command})
    return cases


# ---------------------------------------------------------------------------------------------
# Model directories, files and text
# ---------------------------------------------------------------------------------------------

def model_dir_cases(tmp: Path) -> list[dict]:
    import torch

    import test_model_dirs
    from marsrm.model import HeadRewardModel, ModelSpec, ScalarHead, new_full_model
    from marsrm.runtime import resolve_backbone

    saved = tmp / "saved"
    torch.manual_seed(0)
    backbone = resolve_backbone(None)
    HeadRewardModel(ModelSpec(mode="head", backbone=backbone, max_length=32, embed_dtype="fp32"),
                    ScalarHead(384)).save(saved / "head")
    new_full_model(ModelSpec(mode="full", backbone=backbone, max_length=32)).save(saved / "full")
    cases = []
    for i, (name, which, breaks, _) in enumerate(test_model_dirs.CASES):
        room = tmp / f"model-{i}"
        room.mkdir()
        copy = shutil.copytree(saved / which, room / which)
        named = breaks(copy, room)
        target = copy if named == copy or copy in named.parents else named  # as tests/test_model_dirs.py picks
        cases.append({"class": "model directories", "command": "eval", "case": name,
                      "argv": ["eval", "--model", str(target), "--data", PAIRS, "--n-resamples", "20"]})
    cases.append({"class": "model directories", "command": "eval", "case": "a plain encoder (untrained head)",
                  "argv": ["eval", "--model", backbone, "--data", PAIRS, "--n-resamples", "20"]})
    cases.append({"class": "model directories", "command": "train", "case": "a mistyped --backbone path",
                  "argv": ["train", *SMALL, "--backbone", "./modls/minilm", "--output", str(tmp / "out")]})
    cases.append({"class": "model directories", "command": "train", "case": "an offline hub name",
                  "argv": ["train", *SMALL, "--backbone", "nobody/no-such-model", "--output", str(tmp / "out")]})
    return cases


def file_cases(tmp: Path, runs: dict) -> list[dict]:
    def data_file(name: str, content: bytes) -> str:
        path = tmp / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return str(path)

    pair = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    good = json.dumps(pair) + "\n"
    (tmp / "files" / "a-folder.jsonl").mkdir(parents=True, exist_ok=True)
    (tmp / "files" / "plain-file").write_text("x")
    bad_data = {
        "a missing data file": str(tmp / "files" / "no-such.jsonl"),
        "a data path that is a folder": str(tmp / "files" / "a-folder.jsonl"),
        "a data path under a file": str(tmp / "files" / "plain-file" / "pairs.jsonl"),
        "an empty data file": data_file("empty.jsonl", b""),
        "a data file that is not UTF-8": data_file("latin1.jsonl", good.replace("2 + 2", "caf\xe9").encode("latin-1")),
        "a line that is not JSON": data_file("broken.jsonl", (good + "{oops\n").encode()),
        "a lone surrogate in a response": data_file("surrogate.jsonl",
                                                    (good + json.dumps({**pair, "chosen": "4 \ud800"}) + "\n").encode()),
        "a response that is a number": data_file("number.jsonl", (good + json.dumps({**pair, "chosen": 4}) + "\n").encode()),
        "a truncated gzip file": data_file("cut.jsonl.gz", __import__("gzip").compress(good.encode() * 50)[:40]),
        "binary bytes": data_file("binary.jsonl", bytes(range(256)) * 4),
    }
    cases = []
    for name, data in bad_data.items():
        for command in ("train", "run", "compare", "eval", "augment"):
            argv = [command, "--data", data]
            if command == "eval":
                argv += ["--model", str(runs["train"] / "model")]
            elif command == "augment":
                argv += ["--paraphraser", "lexical", "--output", str(tmp / "out")]
            else:
                argv += ["--output", str(runs[command]), "--overwrite", "--no-progress"]
            cases.append({"class": "files, text, command line", "command": command, "case": name, "argv": argv,
                          "guards": command if command in runs else "train" if command == "eval" else None})
    missing = data_file("mapped.jsonl", (json.dumps({"q": "hi", "chosen": "a", "rejected": "b"}) + "\n").encode())
    cases.append({"class": "files, text, command line", "command": "train", "case": "a mapped field that no row has",
                  "argv": ["train", "--data", missing, "--prompt-field", "question", "--output", str(runs["train"]),
                           "--overwrite"], "guards": "train"})
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]"
                                                           for i in range(1, 10)]
    yamls = {"a YAML file of exploding aliases": "\n".join(bomb) + "\n",
             "a YAML file that runs code": "lr: !!python/object/apply:os.system [echo hi]\n",
             "a YAML file that is a list": "- lr\n- 3\n",
             "a YAML file with a typo": "lrr: 0.1\n",
             "a YAML file that does not parse": "lr: [0.1\n"}
    for name, text in yamls.items():
        path = tmp / "files" / f"{len(cases)}.yaml"
        path.write_text(text)
        cases.append({"class": "files, text, command line", "command": "train", "case": name,
                      "argv": ["train", "--config", str(path), "--output", str(runs["train"]), "--overwrite"],
                      "guards": "train"})
    (tmp / "files" / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    cases.append({"class": "files, text, command line", "command": "train", "case": "a YAML file that is not UTF-8",
                  "argv": ["train", "--config", str(tmp / "files" / "latin1.yaml")]})
    cases.append({"class": "files, text, command line", "command": "train", "case": "a missing YAML file",
                  "argv": ["train", "--config", str(tmp / "files" / "nowhere.yaml")]})
    for name, argv in {"an unknown flag": ["train", "--lrr", "3"], "a flag without its value": ["train", "--lr"],
                       "a value for a switch": ["train", "--no-progress=3"]}.items():
        cases.append({"class": "files, text, command line", "command": "train", "case": name, "argv": argv})
    cases.append({"class": "files, text, command line", "command": "train", "case": "a full disk (injected)",
                  "argv": ["train", *SMALL, "--output", str(runs["train"]), "--overwrite"], "guards": "train",
                  "inject": "enospc"})
    return cases


def boundary_cases(tmp: Path, runs: dict) -> list[dict]:
    argv = ["train", *SMALL, "--output", str(runs["train"]), "--overwrite"]
    return [{"class": "error boundary", "command": "train", "case": "Ctrl-C while training (injected)", "argv": argv,
             "guards": "train", "inject": "interrupt", "want": 130},
            {"class": "error boundary", "command": "train", "case": "a bug in marsrm (injected)", "argv": argv,
             "guards": "train", "inject": "bug", "want": 1}]


@contextlib.contextmanager
def injected(kind: str | None):
    """A fault inside training, for the cases that need one."""
    if kind is None:
        yield
        return
    from marsrm.commands import train as train_command

    real = train_command.make_learner  # looked up in the command's namespace

    def faulty(*args, **kwargs):
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise KeyboardInterrupt if kind == "interrupt" else ZeroDivisionError("division by zero")

    train_command.make_learner = faulty
    try:
        yield
    finally:
        train_command.make_learner = real


FINISHED = {  # a finished run of each command that writes one, for the cases to point --output at
    "train": ["train", *SMALL, "--epochs", "2"],
    "run": ["run", *SMALL, "--strategy", "none", "--rounds", "1", "--budget", "0", "--round-resamples", "10"],
    "compare": ["compare", *SMALL, "--strategies", "none", "--baseline", "none", "--seeds", "1", "--rounds", "1",
                "--budget", "0", "--round-resamples", "10", "--workers", "1"],
}


def finished_run(tmp: Path, name: str) -> Path:
    path = tmp / f"finished-{name}"
    result = attempt([*FINISHED[name], "--output", str(path)], limit_s=600)
    if result["rc"] != 0:
        raise SystemExit(f"could not make the finished {name} run:\n{result['stderr']}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(HERE / "results" / "hostile.json"))
    parser.add_argument("--keep", help="build the cases in this folder and keep them (with cases.json) for --replay")
    parser.add_argument("--replay", help="rerun the cases kept in this folder against the marsrm importable now "
                        "(e.g. an older checkout on PYTHONPATH), so both versions meet the same list")
    parser.add_argument("--limit", type=int, default=LIMIT_S, help="seconds a case may run before it counts as "
                        "having started the work instead of refusing")
    args = parser.parse_args()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = args.replay or args.keep or stack.enter_context(tempfile.TemporaryDirectory())
        tmp = Path(folder)
        tmp.mkdir(parents=True, exist_ok=True)
        for name in FINISHED:  # made afresh by the version under test
            shutil.rmtree(tmp / f"finished-{name}", ignore_errors=True)
        runs = {name: finished_run(tmp, name) for name in FINISHED}
        if args.replay:
            cases = json.loads((tmp / "cases.json").read_text(encoding="utf-8"))
        else:
            cases = (settings_cases(tmp, runs) + model_dir_cases(tmp) + file_cases(tmp, runs)
                     + boundary_cases(tmp, runs))
            (tmp / "cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
        before = {name: tree(path) for name, path in runs.items()}
        tally, failures = {}, []
        for case in cases:
            with injected(case.get("inject")):
                result = attempt(case["argv"], args.limit)
            outcome = verdict(result, case["command"], case.get("want", 2))
            guarded = case.get("guards")
            lost = guarded is not None and tree(runs[guarded]) != before[guarded]
            if lost:  # put the run back, so the next case guards an intact one
                shutil.rmtree(runs[guarded], ignore_errors=True)
                runs[guarded] = finished_run(tmp, guarded)
                before[guarded] = tree(runs[guarded])
            row = tally.setdefault(case["class"], {"cases": 0, "as_wanted": 0, "guarding_a_run": 0, "runs_changed": 0})
            row["cases"] += 1
            row["as_wanted"] += outcome == "ok"
            row["guarding_a_run"] += guarded is not None
            row["runs_changed"] += lost
            if outcome != "ok" or lost:
                failures.append({"class": case["class"], "case": f"{case['command']}: {case['case']}",
                                 "outcome": outcome, "run_changed": lost, "stderr": result["stderr"][-400:]})
    from common import machine

    report = {"machine": machine(), "seconds": time.perf_counter() - started, "classes": tally,
              "failures": failures}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{'class':<28}{'cases':>7}{'as wanted':>11}{'guarding a run':>16}{'runs changed':>14}")
    for name, row in tally.items():
        print(f"{name:<28}{row['cases']:>7}{row['as_wanted']:>11}{row['guarding_a_run']:>16}{row['runs_changed']:>14}")
    for failure in failures[:20]:
        print(f"  {failure['class']}: {failure['case']}: {failure['outcome']}"
              f"{' (run changed)' if failure['run_changed'] else ''}: {failure['stderr'].strip()[-200:]}")
    print(f"{len(cases)} cases in {report['seconds']:.0f} s → {args.output}")


if __name__ == "__main__":
    main()
