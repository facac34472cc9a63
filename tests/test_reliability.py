"""Reliability: the MARS loop killed at random moments, concurrent pool builds, HTTP faults, secrets and hostile
ids, large pools (docs/RELIABILITY.md says what each guarantees and how long it takes)."""
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from marsrm.pool import FilterSettings, Paraphraser, build_pool
from test_pool_remote import LoopbackServer

SCRIPTS = Path(__file__).parent / "scripts"
QUIET = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
         "HF_HUB_OFFLINE": "1"}  # one thread each: the machine is shared, and BLAS threads fight on two cores


class WordDropout(Paraphraser):
    """Deterministic stand-in paraphrases: each word dropped with probability 0.15, seeded by the task."""

    kind = "word-dropout"

    def settings(self):
        return {"kind": self.kind, "p": 0.15}

    def complete(self, tasks, on_done=None):
        out = []
        for index, task in enumerate(tasks):
            rng = random.Random(task.seed)
            words = task.text.split()
            out.append(" ".join(w for w in words if rng.random() > 0.15) or task.text)
            if on_done is not None:
                on_done(index, out[-1])
        return out


# --- files that must read back whole ---------------------------------------------------------------------------

def is_temporary(path: Path, root: Path) -> bool:
    """Inside or named like an `atomic_write` temporary (.<name>.<random>.tmp): partial by design."""
    return any(part.startswith(".") and part.endswith(".tmp") for part in path.relative_to(root).parts)


def check_readable(root: Path) -> int:
    """Every JSON, JSONL, YAML, npy, npz and safetensors file under `root` parses completely; returns how many.

    metrics.jsonl is an append-only log: its last line may be cut by a kill (a resume drops it), so a line that
    does not parse is allowed only at the very end, without its newline.
    """
    from safetensors.torch import load_file

    checked = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or is_temporary(path, root):
            continue
        suffix = path.suffix
        if suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".jsonl":
            text = path.read_text(encoding="utf-8")
            lines = text.split("\n")
            for number, line in enumerate(lines[:-1], 1):
                assert line.strip(), f"{path}: empty line {number}"
                json.loads(line)
            if lines[-1]:
                assert path.name == "metrics.jsonl", f"{path}: last line without its newline"
        elif suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for name in arrays.files:
                    arrays[name]
        elif suffix == ".safetensors":
            load_file(str(path))
        else:
            continue
        checked += 1
    return checked


TIMING = ("seconds", "_per_s")


def without_timings(value):
    """A JSON value with wall-clock measurements (…_seconds, …_per_s) left out, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith(TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_files(run_dir: Path) -> dict:
    """A run directory's content for comparison: each file's SHA-256, or for the logs and the config, what they
    say without timings and without the directory's own name."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if not path.is_file() or relative.startswith("tensorboard/"):  # event files are named by time and host
            continue
        if path.name == "metrics.jsonl":
            out[relative] = [without_timings(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.name == "results.json":
            out[relative] = without_timings(json.loads(path.read_text()))
        elif path.name == "config.yaml":
            out[relative] = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "output"}
        elif path.name == "run.json":  # the settings as requested and resolved, less the directory's name
            record = json.loads(path.read_text())
            out[relative] = {part: ({k: v for k, v in values.items() if k != "output"}
                                    if part in ("requested", "resolved") else values) for part, values in record.items()}
        else:
            out[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- 1. the MARS loop killed at random moments -----------------------------------------------------------------

class ForkServer:
    """tests/scripts/fork_server.py: `marsrm` commands as children of one warm process (see its docstring)."""

    def __init__(self, env):
        self.process = subprocess.Popen([sys.executable, str(SCRIPTS / "fork_server.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        self.child = None
        assert self._line(600) == "ready"  # minutes only where other work starves this process

    def _line(self, timeout):
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else None

    def start(self, argv, log) -> int:
        self.process.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        line = self._line(60)
        assert line and line.startswith("pid "), line
        self.child = int(line.split()[1])
        return self.child

    def wait(self, timeout) -> int | None:
        """The child's exit code, or None if it is still running after `timeout` seconds."""
        line = self._line(timeout)
        if line is None:
            return None
        assert line.startswith("exit "), line
        self.child = None
        return int(line.split()[1])

    def run(self, argv, log, limit=300) -> tuple[int, float]:
        started = time.perf_counter()
        self.start(argv, log)
        code = self.wait(limit)
        assert code is not None, f"marsrm {' '.join(argv)} ran past {limit} s"
        return code, time.perf_counter() - started

    def kill(self) -> None:
        """SIGKILL the running child. It may have ended, and been reaped, just before: its exit line follows."""
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self):
        if self.child is not None:  # a test failed while a command ran
            self.kill()
        self.process.kill()
        self.process.wait()


LOOP_DATA = {"train_size": 40, "eval_size": 20, "val_size": 0, "seed": 0}


@pytest.fixture(scope="module")
def loop_setup(tmp_path_factory, hh_dir):
    """A pool directory for the first 40 training pairs (word-dropout variants, 3×3 per pair) and an embedding
    cache for all the runs of this module."""
    from marsrm.commands.run import RunConfig
    from marsrm.pipeline import load_split

    root = tmp_path_factory.mktemp("loop")
    data = str(hh_dir / "helpful-online-test.jsonl.gz")
    split, _ = load_split(RunConfig(data=data, **LOOP_DATA), echo=lambda *_: None)
    build_pool(split.train, WordDropout(), root / "pool", n=3, targets="responses",
               label_filter=FilterSettings(min_cosine=0.0), progress=False, echo=lambda *_: None)
    return {"data": data, "pool": root / "pool", "cache": root / "cache", "root": root}


def loop_argv(setup, output, extra=()):
    return ["run", "--data", setup["data"], "--train-size", "40", "--eval-size", "20", "--val-size", "0",
            "--pool", str(setup["pool"]), "--rounds", "6", "--budget", "60", "--max-length", "64", "--lr", "0.01",
            "--n-resamples", "50", "--round-resamples", "20", "--log-every", "2", "--no-progress", "--output",
            str(output), *extra]


KILL_SETTINGS = {"mars": ["--strategy", "mars", "--tau", "1.0"],
                 "self-train": ["--strategy", "self-train", "--accumulate"]}  # swapped labels, accumulated samples
KILLS_PER_SETTING = 10


def test_a_mars_run_killed_at_random_moments_resumes_to_the_uninterrupted_run(loop_setup):
    root = loop_setup["root"]
    server = ForkServer({**os.environ, **QUIET, "MARSRM_CACHE": str(loop_setup["cache"])})
    rng = np.random.default_rng(20240611)
    report = {"kills": 0, "finished": 0, "files_checked": 0, "resumes": 0}
    started = time.perf_counter()
    try:
        seconds = {}
        for name, extra in KILL_SETTINGS.items():
            code, seconds[name] = server.run(loop_argv(loop_setup, root / f"whole-{name}", [*extra, "--overwrite"]),
                                             root / "log.txt")
            assert code == 0, (root / "log.txt").read_text()[-3000:]
        # The first run also filled the embedding cache; the last one's duration is what a run takes now.
        span = seconds[list(KILL_SETTINGS)[-1]]
        for name, extra in KILL_SETTINGS.items():
            whole, killed = run_files(root / f"whole-{name}"), root / f"killed-{name}"
            kills = 0
            while kills < KILLS_PER_SETTING:
                # one sequence: start afresh, then kill and resume until a run gets to its end
                first = True
                while True:
                    assert time.perf_counter() - started < 900, f"not enough kills landed in 15 minutes: {report}"
                    resume = not first and (killed / "fingerprint.json").exists()
                    argv = loop_argv(loop_setup, killed, [*extra, "--resume" if resume else "--overwrite"])
                    report["resumes"] += resume
                    first = False
                    server.start(argv, root / "log.txt")
                    code = server.wait(float(rng.uniform(0.0, 1.2 * span)))
                    if code is None:
                        server.kill()
                        code = server.wait(60)  # 0 when the run got to its end just before the signal
                    if code == -signal.SIGKILL:
                        kills += 1
                        report["kills"] += 1
                        report["files_checked"] += check_readable(killed)
                        continue
                    assert code == 0, (root / "log.txt").read_text()[-3000:]
                    break
                report["finished"] += 1
                assert run_files(killed) == whole
                assert not [p for p in killed.rglob("*") if is_temporary(p, killed)]
                report["files_checked"] += check_readable(killed)
    finally:
        server.close()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\nloop kills: {report}")
    assert report["kills"] >= 2 * KILLS_PER_SETTING and report["resumes"] >= report["kills"] // 2


class Killed(BaseException):
    """Stands for SIGKILL at one exact point of the loop (in-process, so the point is exact)."""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_next_to_a_rounds_checkpoint_resumes_to_the_uninterrupted_run(loop_setup, tmp_path, monkeypatch, when):
    """The checkpoint commits a round: a kill just before it reruns the round, a kill just after it finds the
    round's log line already written (logging it after the checkpoint lost the line, and the run ended without it)."""
    import dataclasses

    from threadpoolctl import threadpool_limits

    import marsrm.loop
    from marsrm.commands.run import RunConfig, run

    monkeypatch.setenv("MARSRM_CACHE", str(loop_setup["cache"]))
    config = RunConfig(data=loop_setup["data"], **LOOP_DATA, pool=str(loop_setup["pool"]), rounds=3, budget=60,
                       tau=1.0, max_length=64, lr=0.01, n_resamples=50, round_resamples=20, log_every=2,
                       progress=False, output=str(tmp_path / "whole"))
    real = marsrm.loop.atomic_write_dir

    def killed_at_round_2(path, write):
        if Path(path).name == "round-2":
            if when == "after":
                real(path, write)
            raise Killed()
        return real(path, write)

    with threadpool_limits(1):
        run(config, echo=lambda *_: None)
        cut = dataclasses.replace(config, output=str(tmp_path / "cut"))
        monkeypatch.setattr(marsrm.loop, "atomic_write_dir", killed_at_round_2)
        with pytest.raises(Killed):
            run(cut, echo=lambda *_: None)
        monkeypatch.setattr(marsrm.loop, "atomic_write_dir", real)
        run(dataclasses.replace(cut, resume=True), echo=lambda *_: None)
    assert run_files(tmp_path / "cut") == run_files(tmp_path / "whole")
    rounds = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if r["event"] == "round"] == [1, 2, 3]


# --- 2. two processes building one pool ------------------------------------------------------------------------

POOL_PAIRS = Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl"


def augment_argv(output):
    return ["augment", "--paraphraser", "lexical", "--data", str(POOL_PAIRS), "--train-size", "12", "--n", "3",
            "--chunk-words", "8", "--output", str(output), "--no-progress"]


def cache_records(pool_dir: Path) -> tuple[dict, int]:
    """(key → outputs over every cache shard, how many records repeat a key); a repeated key must hold the same
    outputs."""
    seen, repeats = {}, 0
    for shard in sorted(pool_dir.glob("cache/*/shard-*.jsonl")):
        for line in shard.read_text().splitlines():
            record = json.loads(line)
            repeats += record["key"] in seen
            assert seen.setdefault(record["key"], record["outputs"]) == record["outputs"], record["key"]
    return seen, repeats


def test_two_processes_building_one_pool_at_once_end_with_the_single_builds_pool(tmp_path):
    from marsrm.pool import open_pool

    env = {**os.environ, **QUIET, "MARSRM_CACHE": str(tmp_path / "embeddings")}
    single = subprocess.run([sys.executable, "-m", "marsrm.cli", *augment_argv(tmp_path / "single")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    go = tmp_path / "go"
    both = [subprocess.Popen([sys.executable, str(SCRIPTS / "augment_in_step.py"), str(go), "0.02",
                              *augment_argv(tmp_path / "shared")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in both] == ["ready", "ready"]
    go.touch()
    outputs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs

    one, shared = open_pool(tmp_path / "single"), open_pool(tmp_path / "shared")
    assert shared.ids == one.ids and len(one.ids) == 12
    for pair_id in one.ids:
        assert shared.record(pair_id) == one.record(pair_id)
        assert shared.variants(pair_id) == one.variants(pair_id)
    assert {k: v for k, v in shared.manifest.items() if k != "report"} == \
        {k: v for k, v in one.manifest.items() if k != "report"}
    assert shared.report["filter"] == one.report["filter"] and shared.report["variants"] == one.report["variants"]
    entries, repeats = cache_records(tmp_path / "shared")
    assert entries == cache_records(tmp_path / "single")[0]
    folders = [sorted(d.name for d in (tmp_path / name).glob("pool-*")) for name in ("shared", "single")]
    assert folders[0] == folders[1] and len(folders[0]) == 1
    assert not [p for p in (tmp_path / "shared").rglob("*") if is_temporary(p, tmp_path / "shared")]
    checked = check_readable(tmp_path / "shared")
    print(f"\nconcurrent pool build: {len(one.ids)} pairs, {len(entries)} cache entries, {repeats} written by both "
          f"processes, {checked} files read back")
    assert repeats > 0  # the builds did overlap: both paraphrased some texts before either saved them


# --- 3. HTTP faults ---------------------------------------------------------------------------------------------

class FaultServer(LoopbackServer):
    """An OpenAI-compatible stand-in on loopback whose k-th chat request meets `schedule(k)`:

    None      answers '<text> #<seed>' (as tests/test_pool_remote.py's stand-in does)
    "slow"    answers after `slow` seconds (a latency spike within the client's timeout)
    "hang"    answers after `hang` seconds (past the client's timeout)
    "drop"    closes the connection without a response
    "cut"     sends the headers and half the body, then closes (Content-Length promises more)
    "garbled" sends half the JSON as a complete body
    "429"     HTTP 429 with `Retry-After: retry_after` (or `retry_after()`, computed as it answers)
    "503"     HTTP 503 whose body echoes the request's Authorization header (as some proxies do), after `pad`
              characters
    """

    def __init__(self, schedule=lambda k: None, slow=0.3, hang=4.0, retry_after="0", pad=0):
        from http.server import BaseHTTPRequestHandler

        from test_pool_remote import answer

        self.schedule, self.times, self.faults, self.auth = schedule, [], [], []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "stand-in"}]}).encode())

            def _send(self, status, data, headers=(), length=None):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    count = len(owner.times)
                    owner.times.append(time.monotonic())
                    owner.auth.append(self.headers.get("Authorization"))
                    fault = owner.schedule(count)
                    owner.faults.append(fault)
                body = json.dumps(answer(payload)).encode()
                try:
                    if fault in ("slow", "hang"):
                        time.sleep(slow if fault == "slow" else hang)
                    if fault == "drop":
                        self.close_connection = True
                    elif fault == "cut":
                        self._send(200, body[: len(body) // 2], length=len(body))
                        self.close_connection = True
                    elif fault == "garbled":
                        self._send(200, body[: len(body) // 2])
                    elif fault == "429":
                        wait = retry_after() if callable(retry_after) else retry_after
                        self._send(429, b'{"error": "slow down"}', [("Retry-After", wait)])
                    elif fault == "503":
                        echo = {"error": "overloaded" + "." * pad, "authorization": self.headers["Authorization"]}
                        self._send(503, json.dumps(echo).encode())
                    else:
                        self._send(200, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                    self.close_connection = True

        self.serve(Handler)


@pytest.fixture
def fault_server():
    servers = []

    def start(*args, **kwargs):
        servers.append(FaultServer(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def http_pairs(count=10):
    from marsrm.data import PreferencePair

    return [PreferencePair(id=f"p{i}", prompt=({"role": "user", "content": f"question number {i}?"},),
                           chosen=f"a helpful answer {i} with some detail", rejected=f"a poor answer {i}")
            for i in range(count)]


def http_build(url, directory, **settings):
    from marsrm.pool.remote import OpenAIParaphraser

    paraphraser = OpenAIParaphraser(base_url=url, **{"backoff": 0.01, "timeout": 2.0, "concurrency": 2, **settings})
    return build_pool(http_pairs(), paraphraser, directory, n=3, label_filter=FilterSettings(min_cosine=0.0),
                      progress=False, flush_every=4, echo=lambda *_: None)


CAUSES = {"hang": "timeout", "drop": "connection", "cut": "truncated body", "garbled": "malformed response",
          "429": "HTTP 429", "503": "HTTP 503"}


def test_http_faults_are_retried_counted_by_cause_and_a_stopped_build_resumes_to_the_healthy_pool(fault_server,
                                                                                                    tmp_path):
    from marsrm.pool import BuildStopped, open_pool

    healthy = http_build(fault_server().url, tmp_path / "healthy")
    # 1. every request from the 21st on loses its connection: the build stops, resumably, saying what happened
    dead = fault_server(lambda k: "drop" if k >= 20 else None)
    with pytest.raises(BuildStopped) as stopped:
        http_build(dead.url, tmp_path / "faulty", retries=2)
    message = str(stopped.value)
    assert "run the same command again" in message and "retries (connection " in message and "1 failed" in message
    # 2. a seeded mix of faults on 18 of the first 60 requests, and latency spikes: retried, counted, resumed
    rng = random.Random(7)
    kinds = ["slow"] * 3 + ["hang"] * 2 + ["drop", "cut", "garbled", "429", "503"] * 3 + ["slow"]
    schedule = dict(zip(rng.sample(range(60), len(kinds)), kinds))
    flaky = fault_server(schedule.get, retry_after="0.1")
    started = time.perf_counter()
    resumed = http_build(flaky.url, tmp_path / "faulty", retries=6)
    seconds = time.perf_counter() - started
    assert [resumed.variants(i) for i in resumed.ids] == [healthy.variants(i) for i in healthy.ids]
    report = open_pool(tmp_path / "faulty").report["requests"]
    injected = {CAUSES[f]: flaky.faults.count(f) for f in CAUSES}
    assert all(flaky.faults.count(f) == kinds.count(f) for f in CAUSES)  # every fault was met
    by_cause = report["retries_by_cause"]
    assert {c: n for c, n in by_cause.items() if c != "timeout"} == {c: n for c, n in injected.items() if c != "timeout"}
    assert by_cause["timeout"] >= injected["timeout"]  # a starved machine may time out more; never less
    assert report["requests"] == len(flaky.times) and report["retries"] == sum(by_cause.values())
    assert report["failed"] == 0 and report["retry_wait_seconds"] >= 0.1 * injected["HTTP 429"]
    print(f"\nhttp faults: stopped after {len(dead.times)} requests; resumed with {report['requests']} requests, "
          f"{report['retries']} retries {by_cause}, {flaky.faults.count('slow')} latency spikes, in {seconds:.1f} s")


def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(fault_server):
    import email.utils

    from marsrm.pool import Task
    from marsrm.pool.remote import RETRY_AFTER_CAP, OpenAIParaphraser, retry_after_seconds

    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(email.utils.formatdate(1000.0 + 30, usegmt=True), now=1000.0) == 30.0
    assert retry_after_seconds(email.utils.formatdate(1000.0 - 30, usegmt=True), now=1000.0) == 0.0
    assert retry_after_seconds("86400") == RETRY_AFTER_CAP
    assert [retry_after_seconds(v) for v in (None, "", "soon", "nan", "Mon, 99 Foo")] == [None] * 5
    for header in ("1", lambda: email.utils.formatdate(time.time() + 2, usegmt=True)):  # a date: whole seconds
        server = fault_server(lambda k: "429" if k == 0 else None, retry_after=header)
        paraphraser = OpenAIParaphraser(base_url=server.url, backoff=0.0, timeout=5.0, concurrency=1)
        assert paraphraser.complete([Task("Water the basil.", 3)]) == ["Water the basil. #3"]
        assert len(server.times) == 2 and server.times[1] - server.times[0] >= 0.9, header
        assert paraphraser.request_report()["retries_by_cause"] == {"HTTP 429": 1}


# --- 4. secrets, remote code, hostile ids -----------------------------------------------------------------------

def test_the_api_key_is_in_no_file_and_no_output_of_a_build_that_stopped_resumed_and_trained(fault_server, tmp_path):
    key = "sk-test-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:24]
    env = {**os.environ, **QUIET, "MARSRM_CACHE": str(tmp_path / "cache"), "MARSRM_TEST_API_KEY": key}
    data = ["--data", str(POOL_PAIRS), "--train-size", "8", "--eval-size", "4"]

    def marsrm(*argv):
        return subprocess.run([sys.executable, "-m", "marsrm.cli", *argv], env=env, capture_output=True, text=True,
                              timeout=600)

    def augment(server):
        return marsrm("augment", *data, "--paraphraser", "openai", "--base-url", server.url, "--api-key-env",
                      "MARSRM_TEST_API_KEY", "--n", "2", "--targets", "responses", "--retries", "1", "--timeout", "5",
                      "--concurrency", "2", "--output", str(tmp_path / "pool"), "--no-progress")

    echoing = fault_server(lambda k: "503" if k >= 6 else None)  # the 503s quote the request's headers back
    stopped = augment(echoing)
    assert stopped.returncode == 2 and "run the same command again" in stopped.stderr, stopped.stderr[-2000:]
    assert "Bearer [api key]" in stopped.stderr  # the echoed header reached the message, without the key
    finished = augment(fault_server())
    assert finished.returncode == 0, finished.stderr[-2000:]
    trained = marsrm("run", *data, "--pool", str(tmp_path / "pool"), "--rounds", "1", "--budget", "16",
                     "--max-length", "64", "--n-resamples", "20", "--round-resamples", "10", "--output",
                     str(tmp_path / "run"), "--no-progress")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert {f"Bearer {key}"} == set(echoing.auth)  # the key was sent, so it could have leaked

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"pool", "run", "cache"} <= {p.relative_to(tmp_path).parts[0] for p in written}
    leaks = [str(p) for p in written if key.encode() in p.read_bytes()]
    leaks += [name for name, run in (("augment (stopped)", stopped), ("augment", finished), ("run", trained))
              for text in (run.stdout, run.stderr) if key in text]
    assert leaks == []
    print(f"\napi key: {len(written)} files and 6 output streams searched, no key")


@pytest.mark.parametrize("pad", [0, 150, 172, 190])
def test_a_key_echoed_by_the_server_is_cut_out_of_the_message_even_across_the_quotes_end(fault_server, monkeypatch,
                                                                                         pad):
    """The message quotes 200 characters of an error body; a key straddling that end must not leak in part."""
    from marsrm.pool import BuildStopped, Task
    from marsrm.pool.remote import OpenAIParaphraser

    key = "sk-test-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("MARSRM_TEST_API_KEY", key)
    server = fault_server(lambda k: "503", pad=pad)
    paraphraser = OpenAIParaphraser(base_url=server.url, api_key_env="MARSRM_TEST_API_KEY", retries=0, timeout=5.0)
    with pytest.raises(BuildStopped) as stopped:
        paraphraser.complete([Task("Water the basil.", 3)])
    message = str(stopped.value)
    assert "HTTP 503" in message and not any(key[i:i + 8] in message for i in range(len(key) - 7))


def test_remote_code_is_off_unless_the_caller_turns_it_on(tmp_path):
    """Every setting and keyword named trust_remote_code defaults to False, and a model directory's own
    marsrm.json cannot turn it on when the model is loaded."""
    import dataclasses
    import importlib
    import inspect
    import pkgutil

    import marsrm
    from marsrm.model import ScalarHead, load_reward_model
    from marsrm.runtime import resolve_backbone

    defaults = {}
    for module_info in pkgutil.walk_packages(marsrm.__path__, "marsrm."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if dataclasses.is_dataclass(value):
                fields = {f.name: f.default for f in dataclasses.fields(value)}
                if "trust_remote_code" in fields:
                    defaults[f"{module.__name__}.{name}"] = fields["trust_remote_code"]
            elif callable(value):
                for function in (value, getattr(value, "__init__", None)):
                    try:
                        parameter = inspect.signature(function).parameters.get("trust_remote_code")
                    except (TypeError, ValueError):
                        continue
                    if parameter is not None:
                        defaults[f"{module.__name__}.{name}"] = parameter.default
    assert len(defaults) >= 8 and {k: v for k, v in defaults.items() if v is not False} == {}

    from safetensors.torch import save_file

    directory = tmp_path / "model"
    directory.mkdir()
    head = ScalarHead(384, 0)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(directory / "head.safetensors"))
    spec = {"mode": "head", "backbone": resolve_backbone(None), "trust_remote_code": True}
    (directory / "marsrm.json").write_text(json.dumps({"format": "marsrm-reward-model", "version": 1, "spec": spec,
                                                       "head_dim": 384}))
    assert load_reward_model(directory).spec.trust_remote_code is False
    assert load_reward_model(directory, trust_remote_code=True).spec.trust_remote_code is True


HOSTILE_IDS = ["../../../escape-rel", "/tmp/escape-abs", "a/../../escape-mid", "..", ".", "nul\\..\\escape-win",
               "~/escape-home", "$HOME/escape-var", "escape\x00nul", "con", "escape\nline", "-rf escape"]


def test_pair_ids_from_the_data_never_name_a_file(tmp_path, monkeypatch):
    """Ids that look like paths go through a pool build, a MARS round and an export: every file written stays in
    the directories asked for, and no file or folder is named after an id."""
    from threadpoolctl import threadpool_limits

    from marsrm.commands.run import RunConfig, run
    from marsrm.pool import export_trl

    sandbox = tmp_path / "a" / "b" / "c"
    sandbox.mkdir(parents=True)
    data = sandbox / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": pid, "prompt": f"What should I plant in spring, case {k}?",
                                        "chosen": f"Peas and lettuce like the cool weather of early spring ({k}).",
                                        "rejected": f"Plants {k}."}) + "\n" for k, pid in enumerate(HOSTILE_IDS)))
    monkeypatch.setenv("MARSRM_CACHE", str(sandbox / "cache"))
    monkeypatch.chdir(sandbox)
    config = RunConfig(data=str(data), train_size=8, eval_size=4, pool=str(sandbox / "pool"), rounds=1, budget=16,
                       max_length=32, n_resamples=20, round_resamples=10, progress=False, output=str(sandbox / "run"))
    from marsrm.pipeline import load_split

    split, _ = load_split(config, echo=lambda *_: None)
    assert sorted(p.id for p in split.train + split.eval) == sorted(HOSTILE_IDS)
    pool = build_pool(split.train, WordDropout(), sandbox / "pool", n=2, label_filter=FilterSettings(min_cosine=0.0),
                      progress=False, echo=lambda *_: None)
    export_trl(pool, sandbox / "export.jsonl", per_pair=2, seed=0)
    with threadpool_limits(1):
        run(config, echo=lambda *_: None)

    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    outside = [p for p in made if p.parts[:3] != ("a", "b", "c") and p not in {Path("a"), Path("a/b")}]
    assert outside == []
    expected = {"pairs.jsonl", "cache", "pool", "run", "export.jsonl"}
    assert {p.parts[3] for p in made if len(p.parts) > 3} == expected
    fragments = ("escape", "nul", "-rf", "~", "$")
    named = [p for p in made if any(part in HOSTILE_IDS or any(f in part for f in fragments) for part in p.parts[3:])]
    assert named == []
    assert not list(Path("/tmp").glob("escape*")) and not list(Path.home().glob("escape*"))
    assert json.loads((sandbox / "run" / "eval_ids.json").read_text()) == [p.id for p in split.eval]
