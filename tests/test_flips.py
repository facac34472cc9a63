"""Label flips: a variant flips when the judge's margin sign on it differs from its sign on the source pair."""
import numpy as np
import pytest

from marsrm import flips as fl


def test_a_flip_is_a_change_of_the_judges_sign_not_a_judge_error():
    judge_source = np.array([2.0, -1.0, 0.5])  # the judge gets pair 1 wrong: that alone is no flip
    judge_variants = np.array([1.0, -3.0, -0.2, -0.1, 0.4, 0.3])
    sizes = np.array([2, 2, 2])
    assert fl.flipped(judge_source, judge_variants, sizes).tolist() == [False, True, False, False, False, False]
    assert fl.pair_flip_rates(fl.flipped(judge_source, judge_variants, sizes), sizes).tolist() == [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="shapes disagree"):
        fl.flipped(judge_source, judge_variants[:5], sizes)


def test_deciles_rank_pairs_by_the_trained_models_margin():
    rng = np.random.default_rng(0)
    n = 100
    margins = rng.normal(size=n)
    sizes = np.full(n, 4)
    # Variants of low-|Δ| pairs flip, the others never do.
    low = np.argsort(np.abs(margins))[:10]
    flips = np.zeros(4 * n, dtype=bool)
    for i in low:
        flips[4 * i:4 * i + 4] = True
    rows = fl.by_decile(margins, flips, sizes)
    assert [r["flip_rate"] for r in rows] == [1.0] + [0.0] * 9
    assert sum(r["pairs"] for r in rows) == n and rows[0]["margin_high"] <= rows[1]["margin_low"]
    signed = fl.by_decile(margins, flips, sizes, signed=True)
    assert signed[0]["margin_low"] == pytest.approx(margins.min())


def test_sampled_flip_rate_weights_by_budget():
    flips = np.array([True, False, False, True, False])
    sizes = np.array([2, 3])
    # pair 0 variant 0 (flipped) drawn twice, pair 1 variant 1 (flipped) once, pair 1 variant 0 once
    assert fl.sampled_flip_rate(flips, sizes, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])) == 0.75
    assert fl.sampled_flip_rate(flips, sizes, np.array([], dtype=int), np.array([], dtype=int)) is None
