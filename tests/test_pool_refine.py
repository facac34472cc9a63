"""Tests for semantic refinement: selection below the mean distance, rejected first, keep only what grows it."""
import numpy as np
import pytest

from marsrm.data import PreferencePair
from marsrm.pool import Paraphraser, PoolError, refine_pairs, semantic_distance
from marsrm.pool.lexical import LexicalParaphraser
from marsrm.pool.store import ParaphraseStore

VOCAB = ["cat", "dog", "sun", "rain", "tea", "milk", "red", "blue"]


def embed(texts):
    """Bag of words over VOCAB (+1 constant so no vector is zero)."""
    return np.array([[t.split().count(w) for w in VOCAB] + [0.1] for t in texts], dtype=float)


class Rewriter(Paraphraser):
    """Rewrites by a script: {(role, text): [outputs per try]}; anything else comes back unchanged."""

    kind = "scripted"

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = {k: list(v) for k, v in script.items()}, []

    def settings(self):
        return {"kind": self.kind}

    def complete(self, tasks, on_done=None):
        out = []
        for index, task in enumerate(tasks):
            self.calls.append((task.kind, task.text))
            queue = self.script.get((task.kind.removeprefix("rewrite-"), task.text))
            text = queue.pop(0) if queue else task.text
            out.append(text)
            if on_done is not None:
                on_done(index, text)
        return out


def pair(i, chosen, rejected):
    return PreferencePair(id=f"p{i}", prompt=({"role": "user", "content": "q"},), chosen=chosen, rejected=rejected)


PAIRS = [pair(0, "cat dog", "cat dog sun"),     # close: selected
         pair(1, "cat", "rain"),                # far apart: left alone
         pair(2, "tea milk", "tea milk red"),   # close: selected
         pair(3, "sun", "blue")]                # far apart


def test_semantic_distance_is_one_minus_cosine():
    d = semantic_distance(embed, ["cat", "cat"], ["cat", "dog"])
    assert d[0] == pytest.approx(0.0) and d[1] == pytest.approx(1 - 0.01 / 1.01)


def test_refinement_selects_below_the_mean_tries_rejected_first_and_keeps_only_growth():
    script = {("rejected", "cat dog sun"): ["cat dog", "rain rain"],      # 1st try shrinks distance, 2nd grows
              ("rejected", "tea milk red"): ["tea milk", "tea milk"],     # never grows
              ("chosen", "tea milk"): ["red blue"]}                       # the chosen rewrite grows it
    rewriter = Rewriter(script)
    refined, report = refine_pairs(PAIRS, rewriter, embed, tries=2, progress=False)
    assert report.selected == 2 and report.kept == 2 and report.rewritten == 2
    assert report.rejected_kept == 1 and report.chosen_kept == 1
    assert [p.id for p in refined] == [p.id for p in PAIRS]
    assert refined[0].rejected == "rain rain" and refined[0].chosen == "cat dog"
    assert refined[2].chosen == "red blue" and refined[2].rejected == "tea milk red"
    assert refined[1] == PAIRS[1] and refined[3] == PAIRS[3]  # far pairs never touched
    assert refined[0].meta["refined"]["rejected"] == "cat dog sun" and refined[0].meta["refined"]["chosen"] is None
    before, after = refined[2].meta["refined"]["distance"]
    assert after > before
    assert report.mean_distance_selected_after > report.mean_distance_selected_before
    # rejected first (both selected pairs), then chosen; a pair stops trying once a rewrite is kept
    kinds = [k for k, _ in rewriter.calls]
    assert kinds.index("rewrite-chosen") > max(i for i, k in enumerate(kinds) if k == "rewrite-rejected")
    assert rewriter.calls.count(("rewrite-rejected", "cat dog sun")) == 2
    assert rewriter.calls.count(("rewrite-rejected", "tea milk red")) == 2  # up to `tries`, no more
    assert ("rewrite-chosen", "cat dog") in rewriter.calls  # the chosen one is tried after the rejected was kept


def test_an_unchanged_or_empty_rewrite_is_not_counted_as_rewritten():
    refined, report = refine_pairs(PAIRS, Rewriter({("rejected", "cat dog sun"): ["", ""]}), embed, tries=2,
                                   progress=False)
    assert report.selected == 2 and report.rewritten == 0 and report.kept == 0
    assert refined == PAIRS


def test_rewrites_go_through_the_cache_so_a_rerun_asks_for_nothing(tmp_path):
    script = {("rejected", "cat dog sun"): ["rain rain"], ("chosen", "tea milk"): ["red blue"]}
    store = ParaphraseStore(tmp_path, {"kind": "scripted"})
    first, _ = refine_pairs(PAIRS, Rewriter(script), embed, tries=3, store=store, progress=False)
    again = Rewriter({})
    second, _ = refine_pairs(PAIRS, again, embed, tries=3, store=ParaphraseStore(tmp_path, {"kind": "scripted"}),
                             progress=False)
    assert again.calls == [] and second == first


def test_bad_settings_and_a_lexical_rewriter_are_refused():
    with pytest.raises(PoolError, match="refine_tries"):
        refine_pairs(PAIRS, Rewriter({}), embed, tries=0)
    with pytest.raises(PoolError, match="cannot rewrite"):
        refine_pairs(PAIRS, LexicalParaphraser(), embed)
