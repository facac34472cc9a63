"""Tests for marsrm.pool.build: the crossing scheme, pool files, cache reuse, resuming after failures and kills."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marsrm.data import PreferencePair
from marsrm.pool import BuildStopped, FilterSettings, Paraphraser, PoolError, build_pool, cross, open_pool

quick = settings(max_examples=100, deadline=None)
NO_COSINE = FilterSettings(min_cosine=0.0)


class FakeParaphraser(Paraphraser):
    """Deterministic 'paraphrases': the text plus a tag from the task's seed; scripted failures."""

    kind = "fake"

    def __init__(self, tag="v1", fail_after=None, outputs=None):
        super().__init__()
        self.tag, self.fail_after, self.outputs = tag, fail_after, outputs or {}
        self.completed = 0

    def settings(self):
        return {"kind": self.kind, "tag": self.tag}

    def complete(self, tasks, on_done=None):
        out = []
        for index, task in enumerate(tasks):
            if self.fail_after is not None and self.completed >= self.fail_after:
                raise BuildStopped("injected server failure")
            text = f"{task.text} ({task.seed % 9973})"
            scripted = self.outputs.get(task.text)
            if scripted is not None:
                text = scripted.pop(0)
            self.completed += 1
            self.tokens += len(text.split())
            out.append(text)
            if on_done is not None:
                on_done(index, text)
        return out


def pair(i, turns=1):
    prompt = []
    for t in range(turns):
        if t:
            prompt.append({"role": "assistant", "content": f"earlier answer {i}.{t}"})
        prompt.append({"role": "user", "content": f"question {i} turn {t} about gardens"})
    return PreferencePair(id=f"p{i}", prompt=tuple(prompt), chosen=f"a helpful answer number {i} with details",
                          rejected=f"an unhelpful reply {i}", margin=0.5 if i % 2 else None, subset="s")


def pool_files(directory):
    """The pool's content: every record of every shard the manifest lists."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    lines = []
    for shard in manifest["shards"]:
        lines += (Path(directory) / shard).read_text().splitlines()
    return lines


# --- the crossing scheme -----------------------------------------------------------------------------

def test_cross_is_the_papers_scheme_when_everything_is_kept():
    n = 5
    ok = [True] * n
    triples = cross(n, ok, ok, ok)
    assert triples == [((i + j) % n, i, j) for i in range(n) for j in range(n)]
    assert cross(n, None, ok, ok) == [(-1, i, j) for i in range(n) for j in range(n)]


@quick
@given(st.integers(1, 6).flatmap(
    lambda n: st.tuples(st.just(n), *[st.lists(st.booleans(), min_size=n, max_size=n)] * 3)), st.booleans())
def test_cross_uses_only_kept_paraphrases_or_the_source(args, prompt_paraphrased):
    n, p_ok, c_ok, r_ok = args
    p_ok = p_ok if prompt_paraphrased else None
    dropped = cross(n, p_ok, c_ok, r_ok, "drop")
    for k, i, j in dropped:
        assert c_ok[i] and r_ok[j] and (k == -1 if p_ok is None else (p_ok[k] and k == (i + j) % n))
    expected = sum(c_ok[i] and r_ok[j] and (p_ok is None or p_ok[(i + j) % n]) for i in range(n) for j in range(n))
    assert len(dropped) == expected
    source = cross(n, p_ok, c_ok, r_ok, "source")
    assert len(set(source)) == len(source) and (-1, -1, -1) not in source
    assert set(dropped) <= set(source)
    for _, i, j in source:
        assert i == -1 or c_ok[i]
        assert j == -1 or r_ok[j]


# --- building and reading ------------------------------------------------------------------------------

def test_build_pool_variants_inherit_label_id_and_use_the_crossed_paraphrases(tmp_path):
    pairs = [pair(0), pair(1, turns=2)]
    pool = build_pool(pairs, FakeParaphraser(), tmp_path, n=3, seed=7, label_filter=NO_COSINE, progress=False,
                      echo=lambda *_: None)
    assert pool.ids == ["p0", "p1"]
    assert list(pool.sizes(["p1", "p0"])) == [9, 9]
    record = pool.record("p1")
    for variant in pool.variants("p1"):
        k, i, j = variant.meta["variant"]
        assert k == (i + j) % 3
        assert variant.id == "p1" and variant.margin == 0.5 and variant.subset == "s"
        assert variant.chosen == record["paraphrases"]["chosen"]["texts"][i]
        assert variant.rejected == record["paraphrases"]["rejected"]["texts"][j]
        assert variant.chosen.startswith(pairs[1].chosen) and variant.rejected.startswith(pairs[1].rejected)
        # only the final user turn is paraphrased; the rest of the dialogue stays
        assert variant.prompt[:2] == pairs[1].prompt[:2]
        assert variant.prompt[2]["content"] == record["paraphrases"]["prompt"]["texts"][k]
        assert variant.prompt[2]["role"] == "user"
    assert pool.pair("p1") == pairs[1]
    assert pool.variants("p9") == [] and list(pool.sizes(["p9", "p0"])) == [0, 9]  # an id it does not hold
    with pytest.raises(KeyError, match="p9"):
        pool.pair("p9")


def test_responses_only_keeps_the_prompt_and_every_text_gets_distinct_seeded_paraphrases(tmp_path):
    pool = build_pool([pair(0)], FakeParaphraser(), tmp_path, n=4, targets="responses", label_filter=NO_COSINE,
                      progress=False, echo=lambda *_: None)
    record = pool.record("p0")
    assert record["paraphrases"]["prompt"] is None
    assert all(v.prompt == pair(0).prompt for v in pool.variants("p0"))
    assert len(set(record["paraphrases"]["chosen"]["texts"])) == 4
    assert len(pool.variants("p0")) == 16


def test_dropped_paraphrases_stay_in_the_files_with_their_reason_and_make_no_variants(tmp_path):
    p = pair(0)
    scripted = {p.chosen: ["", p.chosen, "ok chosen rewrite number zero here"],
                p.rejected: ["fine rejected rewrite 0", "I'm sorry, I can't do that.", "also fine rewrite 0"]}
    pool = build_pool([p], FakeParaphraser(outputs=scripted), tmp_path, n=3, targets="responses",
                      label_filter=NO_COSINE, progress=False, echo=lambda *_: None)
    record = pool.record("p0")
    assert record["paraphrases"]["chosen"]["verdicts"] == ["empty", "identical", None]
    assert record["paraphrases"]["rejected"]["verdicts"] == [None, "refusal", None]
    assert [v.meta["variant"] for v in pool.variants("p0")] == [(-1, 2, 0), (-1, 2, 2)]
    report = pool.report["filter"]
    assert report["total"]["kept"] == 3 and report["total"]["empty"] == 1 and report["total"]["refusal"] == 1
    assert report["chosen"]["identical"] == 1
    # fallback "source": the dropped paraphrase's place is taken by the source text
    again = build_pool([p], FakeParaphraser(outputs={k: list(v) for k, v in {
        p.chosen: ["", p.chosen, "ok chosen rewrite number zero here"],
        p.rejected: ["fine rejected rewrite 0", "I'm sorry, I can't do that.", "also fine rewrite 0"]}.items()}),
        tmp_path / "b", n=3, targets="responses", label_filter=NO_COSINE, fallback="source", progress=False,
        echo=lambda *_: None)
    triples = [v.meta["variant"] for v in again.variants("p0")]
    assert (-1, -1, 0) in triples and (-1, 2, -1) in triples and (-1, -1, -1) not in triples
    assert len(triples) == len(set(triples)) == 5  # chosen {src, 2} × rejected {0, src, 2}, minus the base pair


def test_the_cosine_check_uses_the_given_embedding(tmp_path):
    p = pair(0)
    scripted = {p.chosen: ["totally different words entirely", "a helpful answer number 0 with more details"]}

    vocab = sorted(set(" ".join([p.chosen, *scripted[p.chosen]]).split()))

    def embed(texts):  # bag of words
        return np.array([[t.split().count(w) for w in vocab] for t in texts], dtype=float)

    pool = build_pool([p], FakeParaphraser(outputs=scripted), tmp_path, n=2, targets="responses",
                      label_filter=FilterSettings(min_cosine=0.5), embed=embed, progress=False, echo=lambda *_: None)
    chosen = pool.record("p0")["paraphrases"]["chosen"]
    assert chosen["verdicts"] == ["cosine", None]
    assert chosen["cosines"][0] < 0.5 <= chosen["cosines"][1]


def test_long_texts_are_paraphrased_chunk_by_chunk_and_a_bad_chunk_keeps_its_source(tmp_path):
    long = "First sentence has five words. Second sentence also has five. Third one here is short."
    p = PreferencePair(id="x", prompt=({"role": "user", "content": "q"},), chosen=long, rejected="no")
    fake = FakeParaphraser(outputs={"Second sentence also has five.": [""]})
    pool = build_pool([p], fake, tmp_path, n=1, targets="responses", chunk_words=6, label_filter=NO_COSINE,
                      progress=False, echo=lambda *_: None)
    text = pool.record("x")["paraphrases"]["chosen"]["texts"][0]
    first, second = "First sentence has five words.", "Second sentence also has five."
    third = "Third one here is short."
    assert text.startswith(first + " (") and f" {second} " in text and f" {third} (" in text


def test_a_rebuild_reuses_the_cache_and_a_changed_setting_computes_new_entries(tmp_path):
    pairs = [pair(i) for i in range(4)]
    first = FakeParaphraser()
    build_pool(pairs, first, tmp_path, n=2, label_filter=NO_COSINE, progress=False, echo=lambda *_: None)
    assert first.completed == 4 * 3 * 2
    before = pool_files(tmp_path)
    again = FakeParaphraser()
    pool = build_pool(pairs, again, tmp_path, n=2, label_filter=NO_COSINE, progress=False, echo=lambda *_: None)
    assert again.completed == 0 and pool.report["chunks_cached"] == 12 and pool_files(tmp_path) == before
    # one more pair: only its texts are new
    extra = FakeParaphraser()
    build_pool(pairs + [pair(9)], extra, tmp_path, n=2, label_filter=NO_COSINE, progress=False, echo=lambda *_: None)
    assert extra.completed == 3 * 2
    # a changed paraphraser setting, n or seed: new entries
    for kwargs, paraphraser in (({"n": 2}, FakeParaphraser(tag="v2")), ({"n": 3}, FakeParaphraser()),
                                ({"n": 2, "seed": 1}, FakeParaphraser())):
        build_pool(pairs, paraphraser, tmp_path, label_filter=NO_COSINE, progress=False, echo=lambda *_: None,
                   **kwargs)
        assert paraphraser.completed == 12 * kwargs["n"]
    # the manifest names the latest build; older pool folders are gone
    assert len([d for d in tmp_path.glob("pool-*") if d.is_dir()]) == 1


def test_a_build_that_stops_on_server_errors_keeps_its_work_and_resumes_to_the_same_pool(tmp_path):
    pairs = [pair(i, turns=1 + i % 2) for i in range(10)]
    build_pool(pairs, FakeParaphraser(), tmp_path / "whole", n=3, label_filter=NO_COSINE, progress=False,
               echo=lambda *_: None)
    target = tmp_path / "resumed"
    for fail_after in (7, 20, 41):  # fail three times, each time a little further
        flaky = FakeParaphraser(fail_after=fail_after)
        with pytest.raises(BuildStopped, match="run the same command again"):
            build_pool(pairs, flaky, target, n=3, label_filter=NO_COSINE, progress=False, flush_every=4,
                       echo=lambda *_: None)
        with pytest.raises(PoolError, match="resume"):
            open_pool(target)
    last = FakeParaphraser()
    build_pool(pairs, last, target, n=3, label_filter=NO_COSINE, progress=False, echo=lambda *_: None)
    assert pool_files(target) == pool_files(tmp_path / "whole")
    # nothing was computed twice: the finished texts of every failed batch were kept
    assert last.completed == (30 - (7 // 3 + 20 // 3 + 41 // 3)) * 3
    assert cache_lines(target) == cache_lines(tmp_path / "whole")


def test_a_batch_dependent_backend_keeps_only_whole_batches_when_it_stops(tmp_path):
    pairs = [pair(i) for i in range(6)]  # 18 texts
    flaky = FakeParaphraser(fail_after=2 * 4 * 2 + 3)  # dies inside the third batch of 4 texts (n=2)
    flaky.batch_invariant = False
    with pytest.raises(BuildStopped):
        build_pool(pairs, flaky, tmp_path, n=2, label_filter=NO_COSINE, progress=False, flush_every=4,
                   echo=lambda *_: None)
    assert len(cache_lines(tmp_path)) == 8  # two whole batches; the finished texts of the third were not kept
    resumed = FakeParaphraser()
    build_pool(pairs, resumed, tmp_path, n=2, label_filter=NO_COSINE, progress=False, flush_every=4,
               echo=lambda *_: None)
    assert resumed.completed == (18 - 8) * 2


def cache_lines(directory):
    records = [json.loads(line) for shard in Path(directory, "cache").glob("*/shard-*.jsonl")
               for line in shard.read_text().splitlines()]
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)), "a cache entry was written twice"
    return sorted((r["key"], tuple(r["outputs"])) for r in records)


def test_variants_carry_the_hash_of_their_source_pair_as_the_data_holds_it(tmp_path):
    def pair_text_hash(p):  # what the MARS loop checks: the data's own texts, before any refinement
        payload = json.dumps([list(map(dict, p.prompt)), p.chosen, p.rejected], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    original = pair(0, turns=2)
    refined = dataclasses.replace(original, rejected="a rewritten reply", meta={"refined": {
        "rejected": original.rejected, "chosen": None, "distance": [0.1, 0.3]}})
    pool = build_pool([refined, pair(1)], FakeParaphraser(), tmp_path, n=2, label_filter=NO_COSINE, progress=False,
                      echo=lambda *_: None)
    assert {v.meta["source_hash"] for v in pool.variants("p0")} == {pair_text_hash(original)}
    assert {v.meta["source_hash"] for v in pool.variants("p1")} == {pair_text_hash(pair(1))}
    assert pool.pair("p0").rejected == "a rewritten reply"  # the pool's base pair is the refined one
    assert pool.pair("p0").meta["refined"]["rejected"] == original.rejected


def test_duplicate_ids_and_bad_settings_are_refused(tmp_path):
    with pytest.raises(PoolError, match="unique"):
        build_pool([pair(0), pair(0)], FakeParaphraser(), tmp_path, progress=False, echo=lambda *_: None)
    for kwargs, name in (({"n": 0}, "'n'"), ({"targets": "everything"}, "'targets'"), ({"fallback": "x"}, "'fallback'"),
                         ({"label_filter": FilterSettings(min_cosine=2.0)}, "'min_cosine'")):
        with pytest.raises(PoolError, match=name):
            build_pool([pair(0)], FakeParaphraser(), tmp_path, progress=False, echo=lambda *_: None, **kwargs)
    assert not (tmp_path / "manifest.json").exists()


def test_open_pool_explains_a_missing_manifest(tmp_path):
    with pytest.raises(PoolError, match="no pool manifest"):
        open_pool(tmp_path)


# --- killed at any point ---------------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_pool_build import FakeParaphraser, pair, NO_COSINE
    from marsrm.pool import build_pool

    class Slow(FakeParaphraser):
        def complete(self, tasks, on_done=None):
            for index, task in enumerate(tasks):
                time.sleep(0.01)
                super().complete([task], on_done=lambda _, text: on_done(index, text))

    build_pool([pair(i, turns=1 + i % 2) for i in range(12)], Slow(), sys.argv[1], n=3, label_filter=NO_COSINE,
               progress=False, flush_every=2, echo=lambda *_: None)
""")


def kill_and_resume(script: Path, whole: Path, killed: Path, *, kills: int, pause, timeout: float = 120) -> int:
    """Run `script` once into `whole`; then into `killed`, SIGKILLed `pause()` seconds after each newly saved cache
    shard, up to `kills` times, and once more to the end. Returns how many runs were killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(script), str(whole)], check=True, env=env, timeout=timeout)
    done, shards = 0, lambda: len(list(killed.glob("cache/*/shard-*.jsonl")))
    while done < kills and not (killed / "manifest.json").exists():
        process = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
        start = shards()
        while shards() == start and process.poll() is None:  # wait until this run has saved something
            time.sleep(0.005)
        time.sleep(pause())  # then kill it at a point of what follows
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            done += 1
        process.wait(timeout=timeout)
    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env, timeout=timeout)
    return done


def test_a_build_killed_at_random_points_ends_with_the_uninterrupted_pool(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    rng = np.random.default_rng(0)
    assert kill_and_resume(script, whole, killed, kills=4, pause=lambda: float(rng.uniform(0.0, 0.05))) >= 2
    assert pool_files(killed) == pool_files(whole)
    assert cache_lines(killed) == cache_lines(whole)
