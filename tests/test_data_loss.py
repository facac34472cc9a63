"""Never lose a user's work: overwrites that fail, two writers, a pool into the wrong folder, poisoned embeddings,
Ctrl-C during a paid pool build (docs/RELIABILITY.md, "Never lose a user's work")."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from marsrm.cli import main
from marsrm.io import run_directory
from test_pool_remote import StandIn, answer

PAIRS = str(Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
SMALL = ["--data", PAIRS, "--train-size", "8", "--eval-size", "4", "--max-length", "32", "--n-resamples", "20",
         "--no-progress"]
COMMANDS = {  # the three commands that write a run directory, each as small as it gets
    "train": ["train", *SMALL, "--epochs", "2"],
    "run": ["run", *SMALL, "--strategy", "none", "--rounds", "1", "--budget", "0", "--round-resamples", "10"],
    "compare": ["compare", *SMALL, "--strategies", "none", "--baseline", "none", "--seeds", "1", "--rounds", "1",
                "--budget", "0", "--round-resamples", "10", "--workers", "1"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def tree(root: Path) -> dict:
    """Every file under `root` → its SHA-256: what must not change."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One embedding cache for the module's runs (they embed the same twelve pairs)."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(autouse=True)
def _shared_cache(_private_cache, cache, monkeypatch):
    monkeypatch.setenv("MARSRM_CACHE", str(cache))


# --- 1. --overwrite replaces a run only once the new one is complete ---------------------------------------------

@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_overwrite_that_fails_keeps_the_old_run_whole_and_one_that_succeeds_replaces_it(tmp_path, command,
                                                                                          capsys):
    runs = tmp_path / "runs"
    argv = [*COMMANDS[command], "--output", str(runs / "old")]
    assert main(argv) == 0
    before = tree(runs / "old")
    assert "config.yaml" in before and len(before) > 3
    # a typo in --data: the new input is read only after the old run would have been deleted
    typo = [*argv, "--overwrite", "--data", str(tmp_path / "pairs-typo.jsonl")]
    capsys.readouterr()
    assert main(typo) == 2
    assert "pairs-typo.jsonl" in capsys.readouterr().err
    assert tree(runs / "old") == before
    assert sorted(p.name for p in runs.iterdir()) == ["old"]  # no staging, lock or set-aside folder left
    # the same with a new, valid setting: the run is replaced, and nothing else is left beside it
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert "seed: 1" in (runs / "old" / "config.yaml").read_text()
    assert sorted(p.name for p in runs.iterdir()) == ["old"]


def test_an_overwrite_interrupted_mid_training_keeps_the_old_run(tmp_path, monkeypatch):
    import marsrm.learners

    runs = tmp_path / "runs"
    argv = [*COMMANDS["train"], "--output", str(runs / "rm")]
    assert main(argv) == 0
    before = tree(runs / "rm")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(marsrm.learners.HeadLearner, "fit", interrupted)
    assert main([*argv, "--overwrite"]) == 130
    assert tree(runs / "rm") == before and sorted(p.name for p in runs.iterdir()) == ["rm"]


def test_a_leftover_of_a_killed_overwrite_does_not_block_the_next_try(tmp_path):
    runs = tmp_path / "runs"
    argv = [*COMMANDS["train"], "--output", str(runs / "rm"), "--epochs", "500"]
    assert main(argv) == 0
    before = tree(runs / "rm")
    killed = subprocess.Popen([sys.executable, "-m", "marsrm.cli", *argv, "--overwrite"], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(runs.glob(".rm.staging-*/config.yaml")):  # the new run has started beside the old one
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    left = sorted(p.name for p in runs.iterdir())
    assert tree(runs / "rm") == before and any(".rm.staging-" in name for name in left), left
    assert main([*argv, "--overwrite", "--epochs", "2"]) == 0  # not blocked by the lock or the staging folder
    assert sorted(p.name for p in runs.iterdir()) == ["rm"]
    assert "epochs: 2.0" in (runs / "rm" / "config.yaml").read_text()


@pytest.mark.parametrize("state", ["swap cut before the new run went in", "swap cut after the new run went in",
                                   "in-place build cut short", "staging left behind"])
def test_the_next_writer_finishes_or_undoes_what_a_killed_one_left(tmp_path, state):
    runs = tmp_path / "runs"
    old, new, partial = {"results.json": "old"}, {"results.json": "new"}, {"config.yaml": "partial"}

    def folder(name, files):
        (runs / name).mkdir(parents=True)
        for file, text in files.items():
            (runs / name / file).write_text(text)

    expected = {"swap cut before the new run went in": new, "swap cut after the new run went in": new,
                "in-place build cut short": old, "staging left behind": old}[state]
    if state == "swap cut before the new run went in":
        folder(".run.replaced-0a0a0a0a", old), folder(".run.staging-0a0a0a0a", new)
    elif state == "swap cut after the new run went in":
        folder(".run.replaced-0a0a0a0a", old), folder("run", new)
    elif state == "in-place build cut short":
        folder(".run.previous-0a0a0a0a", old), folder("run", partial)
    else:
        folder("run", old), folder(".run.staging-0a0a0a0a", partial)
    (runs / ".run.lock").touch()  # a killed holder's lock file: the lock itself died with it
    with run_directory(runs / "run", resume=True) as work:
        assert {p.name: p.read_text() for p in work.iterdir()} == expected
    assert sorted(p.name for p in runs.iterdir()) == ["run"]


# --- 1. two processes never write one run directory ---------------------------------------------------------------

HOLD = """
import sys
from marsrm.io import run_directory
with run_directory(sys.argv[1], resume=True):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = [*COMMANDS["run"], "--output", str(runs / "mars")]
    assert main(argv) == 0
    before = tree(runs / "mars")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(runs / "mars")], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for extra in (["--overwrite"], ["--resume"]):  # an overwrite and a resume alike
            capsys.readouterr()
            assert main([*argv, *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"is being written by process {holder.pid} on host {socket.gethostname()} since " in err
            assert err.endswith("wait for it or choose another --output")
        assert main([*COMMANDS["train"], "--output", str(runs / "mars"), "--overwrite"]) == 2  # any command
        assert tree(runs / "mars") == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert sorted(p.name for p in runs.iterdir()) == ["mars"]  # a released lock leaves no file behind
    # a holder killed outright releases the lock with its life: the next writer goes ahead
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(runs / "mars")], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    holder.kill()
    holder.wait()
    assert main([*argv, "--resume"]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["mars"]


def test_processes_of_a_multi_process_launch_other_than_the_main_one_write_elsewhere(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    monkeypatch.setenv("RANK", "1")
    with run_directory(run, overwrite=True) as work:  # the main process holds the lock and replaces the run
        assert work != run and not list(tmp_path.glob(".run.*"))
        (work / "config.yaml").write_text("rank 1")
    assert not work.exists() and tree(run) == {"results.json": hashlib.sha256(b"{}").hexdigest()}
    with run_directory(run, resume=True) as work:  # resuming, it reads the main process's checkpoints
        assert work == run


# --- 2. a pool goes only into an empty directory or a pool --------------------------------------------------------

def augment_argv(output):
    return ["augment", "--paraphraser", "lexical", "--data", PAIRS, "--train-size", "4", "--n", "2",
            "--targets", "responses", "--output", str(output), "--no-progress"]


def test_augment_refuses_a_directory_that_is_not_a_pool_before_any_work(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main([*COMMANDS["train"], "--output", str(runs / "rm")]) == 0
    (runs / "rm" / "pool-drafts").mkdir()  # a folder of the user's, named like a pool build
    (runs / "rm" / "pool-drafts" / "notes.txt").write_text("mine")
    before = tree(runs / "rm")
    capsys.readouterr()
    assert main(augment_argv(runs / "rm")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(runs / "rm") in err and "not a pool" in err, err
    assert tree(runs / "rm") == before


def test_augment_resumes_into_its_own_pool_and_deletes_only_the_build_folders_it_made(tmp_path):
    pool = tmp_path / "pool"
    assert main(augment_argv(pool)) == 0
    (pool / "notes.txt").write_text("mine")
    (pool / "pool-0123456789ab").mkdir()  # named exactly like a build folder, but holding a file of the user's
    (pool / "pool-0123456789ab" / "draft.jsonl").write_text("{}\n")
    stale = sorted(pool.glob("pool-*"))
    assert main([*augment_argv(pool), "--n", "3"]) == 0  # a pool directory: reused, the earlier build replaced
    assert (pool / "notes.txt").read_text() == "mine"
    assert (pool / "pool-0123456789ab" / "draft.jsonl").read_text() == "{}\n"
    builds = [p for p in pool.glob("pool-*") if p.name != "pool-0123456789ab"]
    assert len(builds) == 1 and builds[0] not in stale


# --- 3. nothing non-finite in the embedding cache -------------------------------------------------------------------

TEXTS = ["Human: hi\n\nAssistant: hello there", "Human: what is 2+2?\n\nAssistant: 4",
         "Human: tell me a joke\n\nAssistant: no"]


def shards(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("shard-*"))


def test_eval_refuses_a_batch_size_below_one_and_writes_nothing_to_the_cache(tmp_path, cache, capsys):
    assert main([*COMMANDS["train"], "--output", str(tmp_path / "rm")]) == 0
    cached = shards(cache)
    for flag, value in (("--batch-size", "-1"), ("--batch-size", "0"), ("--n-resamples", "0")):
        capsys.readouterr()
        assert main(["eval", "--model", str(tmp_path / "rm" / "model"), "--data", PAIRS, "--train-size", "4",
                     flag, value, "--output", str(tmp_path / "eval.json")]) == 2
        assert f"setting '{flag[2:].replace('-', '_')}'" in capsys.readouterr().err
    assert shards(cache) == cached and not (tmp_path / "eval.json").exists()


def test_the_cache_refuses_non_finite_vectors_and_the_encoder_any_batch_below_one(tmp_path, minilm_path):
    from marsrm.features import EmbeddingCache, Encoder, text_key

    store = EmbeddingCache(tmp_path / "store")
    vectors = np.ones((3, 4), np.float32)
    vectors[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 of 3 vectors are not finite"):
        store.put([text_key(t) for t in TEXTS], vectors)
    assert shards(tmp_path / "store") == []
    encoder = Encoder(minilm_path, max_length=32, dtype="fp32", cache_dir=tmp_path / "encoder")
    for batch_size in (-1, 0):
        with pytest.raises(ValueError, match="batch_size"):
            encoder.embed(TEXTS, batch_size=batch_size)
    assert shards(tmp_path / "encoder") == []


def test_a_cache_entry_that_reads_back_non_finite_is_recomputed_not_served(tmp_path, minilm_path, monkeypatch):
    from marsrm.features import Encoder, text_key

    fresh = Encoder(minilm_path, max_length=32, dtype="fp32", use_cache=False).encode(TEXTS)
    encoder = Encoder(minilm_path, max_length=32, dtype="fp32", cache_dir=tmp_path)
    # a shard as an older version wrote it from uninitialised memory: one NaN row, one inf value
    poisoned = fresh.copy()
    poisoned[0] = np.nan
    poisoned[2, 5] = np.inf
    directory = encoder.cache.directory
    with open(directory / "shard-poisoned.npy", "wb") as handle:
        np.save(handle, poisoned)
    keys = np.frombuffer(b"".join(text_key(t) for t in TEXTS), dtype=np.uint8).reshape(len(TEXTS), 16)
    with open(directory / "shard-poisoned.keys.npy", "wb") as handle:
        np.save(handle, keys)
    served = encoder.embed(TEXTS)
    assert np.isfinite(served).all() and np.allclose(served, fresh, atol=1e-5)
    assert "shard-poisoned.npy" not in shards(directory)  # retired: no other reader is served from it
    # the recomputed vectors are cached: a new process reads them and computes nothing
    again = Encoder(minilm_path, max_length=32, dtype="fp32", cache_dir=tmp_path)
    monkeypatch.setattr(again, "encode", lambda *a, **k: pytest.fail("computed a text the cache holds"))
    assert np.array_equal(again.embed(TEXTS), served)


# --- 4. Ctrl-C during a paid pool build ----------------------------------------------------------------------------

def openai_argv(url, output):
    return ["augment", "--paraphraser", "openai", "--base-url", url, "--data", PAIRS, "--train-size", "6",
            "--n", "2", "--targets", "responses", "--concurrency", "4", "--timeout", "60", "--min-cosine", "0",
            "--output", str(output), "--no-progress"]


def test_ctrl_c_during_an_openai_build_stops_at_once_and_keeps_every_finished_completion(tmp_path):
    whole = StandIn()
    try:
        assert main(openai_argv(whole.url, tmp_path / "whole")) == 0
    finally:
        whole.close()
    answered, release = 5, threading.Event()
    sent = []

    def script(count, payload):  # five answers at once, then requests that hang until the test ends
        if count >= answered:
            release.wait(120)
        else:
            sent.append(count)
        return 200, answer(payload), {}, 0.0

    slow = StandIn(script)
    try:
        build = subprocess.Popen([sys.executable, "-m", "marsrm.cli", *openai_argv(slow.url, tmp_path / "pool")],
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(sent) < answered or slow.in_flight < 4:  # five answered, four hanging
            assert build.poll() is None and time.monotonic() < deadline, build.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # the client has read the five answers
        interrupted = time.monotonic()
        build.send_signal(signal.SIGINT)
        said_at: list = []  # (stderr line, when it came)
        said = threading.Thread(target=lambda: said_at.extend((line, time.monotonic()) for line in build.stderr))
        said.start()
        try:
            build.wait(timeout=60)  # a guard against a hang: the held requests would keep it for 120 s
        finally:
            build.kill()
        seconds = time.monotonic() - interrupted
        still_held = slow.in_flight  # the four held requests had not been answered when it exited
        said.join(timeout=5)
    finally:
        release.set()
        slow.close()
    handled = [at - interrupted for line, at in said_at if "interrupted" in line]
    assert build.returncode == 130 and handled, said_at
    # It stopped without waiting for the in-flight batch: those requests were still unanswered when it exited.
    assert still_held >= 4, still_held
    resumed = StandIn()
    try:
        assert main(openai_argv(resumed.url, tmp_path / "pool")) == 0
    finally:
        resumed.close()
    total = len(whole.requests)
    assert len(resumed.requests) == total - answered  # every finished completion kept, none asked for again
    print(f"\nctrl-c: handled {handled[0]:.3f} s and exited {seconds:.2f} s after the signal, 4 requests in flight; "
          f"{answered} of {total} completions kept, {len(resumed.requests)} requested on resume")
    records = [json.loads(line) for shard in (tmp_path / "whole").glob("pool-*/part-*.jsonl")
               for line in shard.read_text().splitlines()]
    again = [json.loads(line) for shard in (tmp_path / "pool").glob("pool-*/part-*.jsonl")
             for line in shard.read_text().splitlines()]
    assert again == records  # the same pool as the uninterrupted build
