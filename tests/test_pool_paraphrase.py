"""Tests for marsrm.pool's shared pieces: chunking, seeds, output cleaning, the cache store, the label filter."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marsrm.pool.backends import make_paraphraser
from marsrm.pool.filter import FilterSettings, cheap_verdict, cosine_rows, count_reasons, judge
from marsrm.pool.paraphrase import (PoolError, clean_output, derive_seed, join_segments, split_segments,
                                    token_budget, word_count)
from marsrm.pool.store import ParaphraseStore, entry_key, settings_key

quick = settings(max_examples=80, deadline=None)

words = st.sampled_from(["alpha", "beta", "gamma", "delta.", "eps!", "zeta?", "eta,", "theta\n", "iota\n\n", "  "])
texts = st.lists(words, min_size=0, max_size=60).map(" ".join)


# --- chunking -------------------------------------------------------------------------------------

@quick
@given(texts, st.integers(0, 30))
def test_split_segments_joins_back_to_the_text(text, max_words):
    chunks = split_segments(text, max_words)
    assert "".join(c + s for c, s in chunks) == text


@quick
@given(texts, st.integers(1, 30))
def test_split_segments_respects_the_word_limit_except_for_single_long_sentences(text, max_words):
    for chunk, _ in split_segments(text, max_words):
        if word_count(chunk) > max_words:  # only a single sentence that alone is too long
            assert len(split_segments(chunk + ".", 0)) == 1
            inner = [c for c, _ in split_segments(chunk, max_words)]
            assert len(inner) == 1


def test_split_segments_cuts_at_sentence_ends_and_keeps_short_texts_whole():
    text = "One two three. Four five six! Seven eight nine? Ten."
    assert split_segments(text, 100) == [(text, "")]
    assert split_segments(text, 0) == [(text, "")]
    chunks = split_segments(text, 6)
    assert [c for c, _ in chunks] == ["One two three. Four five six!", "Seven eight nine? Ten."]
    assert join_segments(["A.", "B."], [" ", ""]) == "A. B."


# --- seeds, budgets, cleaning ----------------------------------------------------------------------

def test_derive_seed_depends_on_every_part_and_nothing_else():
    assert derive_seed(0, "text", 1) == derive_seed(0, "text", 1)
    seeds = {derive_seed(s, t, k) for s in (0, 1) for t in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**63 for s in seeds)


def test_token_budget_scales_with_the_source_and_is_capped():
    short, long = token_budget("one two", 1.5, 192), token_budget("word " * 60, 1.5, 192)
    assert 16 <= short < long <= 192
    assert token_budget("word " * 1000, 1.5, 192) == 192
    assert token_budget("word " * 60, 3.0, 1000) > long


@pytest.mark.parametrize("raw, source, expected", [
    ("Here's a paraphrase of the text: The cat sat.", "A cat was sitting.", "The cat sat."),
    ("Paraphrase: The cat sat.", "A cat was sitting.", "The cat sat."),
    ('"The cat sat."', "A cat was sitting.", "The cat sat."),
    ("  The cat sat.  ", "A cat was sitting.", "The cat sat."),
    # the source itself starts like a preamble or is quoted: leave the output alone
    ("Here is a short note: Dear Anna, thanks.", "Here is a note: Dear Anna, thank you.",
     "Here is a short note: Dear Anna, thanks."),
    ('"Hi," she said, "bye"', '"Hello," she said, "goodbye"', '"Hi," she said, "bye"'),
])
def test_clean_output(raw, source, expected):
    assert clean_output(raw, source) == expected


def test_make_paraphraser_refuses_an_unknown_backend():
    with pytest.raises(PoolError, match="setting 'paraphraser'"):
        make_paraphraser("telepathy")


# --- the cache store -------------------------------------------------------------------------------

def test_store_keys_by_settings_and_keeps_the_first_record_for_a_key(tmp_path):
    store = ParaphraseStore(tmp_path, {"kind": "fake", "tag": 1})
    key = entry_key("paraphrase", "text", "", 5, 0)
    store.put([{"key": key, "outputs": ["first"]}])
    store.put([{"key": key, "outputs": ["second"]}])  # already there: nothing written
    assert store.get(key)["outputs"] == ["first"]
    assert len(list(store.directory.glob("shard-*.jsonl"))) == 1
    # another process's shard for the same key, written later, does not change what a reader sees
    late = store.directory / "shard-99999999999999999999-late.jsonl"
    late.write_text(json.dumps({"key": key, "outputs": ["late"]}) + "\n")
    again = ParaphraseStore(tmp_path, {"kind": "fake", "tag": 1})
    assert again.get(key)["outputs"] == ["first"]
    assert json.loads((store.directory / "settings.json").read_text()) == {"kind": "fake", "tag": 1}
    assert not list(store.directory.glob(".*tmp"))  # atomic writes leave no temporary files


def test_store_settings_and_entries_key_every_input(tmp_path):
    assert settings_key({"kind": "a", "t": 1}) != settings_key({"kind": "a", "t": 2})
    keys = {entry_key("paraphrase", "x", "", 5, 0), entry_key("paraphrase", "y", "", 5, 0),
            entry_key("paraphrase", "x", "", 4, 0), entry_key("paraphrase", "x", "", 5, 1),
            entry_key("rewrite-chosen", "x", "", 5, 0), entry_key("paraphrase", "x", "o", 5, 0)}
    assert len(keys) == 6


# --- the label filter --------------------------------------------------------------------------------

SOURCE = "Put the basil in a sunny window and water it when the soil is dry."


@pytest.mark.parametrize("paraphrase, reason", [
    ("", "empty"),
    ("  ... ", "empty"),
    ("put the basil in a sunny window and  water it when the soil is dry.", "identical"),
    ("I'm sorry, but I can't help with rewriting that.", "refusal"),
    ("Basil.", "length"),
    (" ".join(["Place the basil somewhere sunny"] * 7), "length"),
    ("Keep the basil by a bright window and water it once the soil dries out.", None),
])
def test_cheap_verdict_reasons(paraphrase, reason):
    assert cheap_verdict(SOURCE, paraphrase, FilterSettings()) == reason


def test_a_refusal_is_not_flagged_when_the_source_is_one():
    source = "I'm sorry, I don't know the answer to that."
    assert cheap_verdict(source, "I'm sorry, I have no idea what the answer is.", FilterSettings()) is None


def test_length_band_edges_are_inclusive():
    band = FilterSettings(min_cosine=0, min_length_ratio=0.5, max_length_ratio=2.0)
    assert cheap_verdict("a b c d", "w x", band) is None
    assert cheap_verdict("a b c d", "w", band) == "length"
    assert cheap_verdict("a b", "w x y z", band) is None
    assert cheap_verdict("a b", "v w x y z", band) == "length"


def test_judge_applies_the_cosine_threshold_only_to_survivors_of_the_cheap_checks():
    vectors = {"src": [1.0, 0.0], "close": [0.9, 0.1], "far": [0.0, 1.0], "": [0.0, 0.0]}
    seen = []

    def embed(batch):
        seen.extend(batch)
        return np.array([vectors[t.split()[0]] if t else vectors[""] for t in batch])

    sources = ["src one two"]
    reasons, cosines = judge(sources, [["close a b", "far a b", ""]], FilterSettings(min_cosine=0.8), embed)
    assert reasons == [[None, "cosine", "empty"]]
    assert cosines[0][0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-4)
    assert cosines[0][2] is None and "" not in seen  # the empty paraphrase is never embedded
    assert count_reasons(reasons) == {"kept": 1, "empty": 1, "identical": 0, "refusal": 0, "length": 0, "cosine": 1}


def test_judge_needs_an_embedding_when_the_cosine_threshold_is_on():
    with pytest.raises(PoolError, match="min_cosine"):
        judge(["a b c"], [["d e f"]], FilterSettings(min_cosine=0.5), None)
    assert judge(["a b c"], [["d e f"]], FilterSettings(min_cosine=0.0), None)[0] == [[None]]


@pytest.mark.parametrize("field, value", [("min_cosine", 1.5), ("min_cosine", -0.1), ("min_length_ratio", 2.0),
                                          ("max_length_ratio", 0.5)])
def test_filter_settings_refuse_out_of_range_values_naming_them(field, value):
    with pytest.raises(PoolError, match=f"setting '{field}'"):
        FilterSettings(**{field: value}).validate()


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert cosine_rows(a, b) == pytest.approx([1.0, -1.0, 0.0])
