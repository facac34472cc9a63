"""Tests for marsrm.allocate: rounding, strategies, sampling, summaries."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from marsrm.allocate import (
    STRATEGIES,
    adaboost_weights,
    allocate,
    allocation_entropy,
    effective_sample_size,
    get_strategy,
    largest_remainder,
    lowest_margin_decile_share,
    pool_offsets,
    pseudo_label,
    sample_variants,
    strategy_settings,
)

# Per-test settings, not a loaded profile: a profile would change every other test file's hypothesis runs.
quick = settings(max_examples=60, deadline=None)

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
margins_st = arrays(np.float64, st.integers(1, 40), elements=finite)
budgets = st.integers(0, 3000)
seeds = st.integers(0, 2**32 - 1)


def _never_favours(keys, counts):
    """No pair with a larger key gets more than one unit above a pair with a smaller key."""
    for i in range(keys.size):
        larger = keys > keys[i]
        assert np.all(counts[larger] <= counts[i] + 1)


# --- largest remainder --------------------------------------------------------------------------------

def test_largest_remainder_hand_examples():
    # 7·(1,2,3)/6 = 1.1667, 2.3333, 3.5: floors 1,2,3 and the one leftover unit to the 0.5 remainder
    assert largest_remainder([1, 2, 3], 7).tolist() == [1, 2, 4]
    # equal remainders: lower index first
    assert largest_remainder([1, 1, 1], 2).tolist() == [1, 1, 0]
    assert largest_remainder([5], 9).tolist() == [9]
    assert largest_remainder([1, 3], 0).tolist() == [0, 0]
    assert largest_remainder([], 0).tolist() == []
    # everything underflowed to 0 -> uniform
    assert largest_remainder([0.0, 0.0, 0.0, 0.0], 6).tolist() == [2, 2, 1, 1]
    # huge weights do not overflow the normalisation
    assert largest_remainder([1e308, 1e308], 3).tolist() == [2, 1]
    assert largest_remainder(np.ones(3), 10**17).sum() == 10**17


@quick
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1e6)), budgets)
def test_largest_remainder_exact_and_within_one_of_quota(weights, budget):
    counts = largest_remainder(weights, budget)
    assert counts.dtype == np.int64 and counts.sum() == budget and np.all(counts >= 0)
    q = weights / weights.sum() if weights.sum() > 0 else np.full(weights.size, 1 / weights.size)
    assert np.all(np.abs(counts - budget * q) < 1 + 1e-9)


@pytest.mark.parametrize(
    "weights, budget, message",
    [([1.0, -1.0], 3, r"weights\[1\]"), ([1.0, np.nan], 3, r"weights\[1\]"), ([1.0], -1, "budget"),
     ([1.0], 2.5, "budget"), ([], 3, "0 pairs"), ([[1.0]], 1, "1-D")],
)
def test_largest_remainder_errors(weights, budget, message):
    with pytest.raises(ValueError, match=message):
        largest_remainder(weights, budget)


# --- strategies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(STRATEGIES))
@quick
@given(margins=margins_st, budget=budgets, seed=seeds)
def test_counts_are_nonnegative_ints_summing_to_budget(name, margins, budget, seed):
    counts = allocate(name, margins, budget, np.random.default_rng(seed))
    assert counts.dtype == np.int64 and counts.shape == margins.shape and np.all(counts >= 0)
    assert counts.sum() == (budget if STRATEGIES[name].augments else 0)


@quick
@given(margins=margins_st, budget=budgets, tau=st.floats(0, 5))
def test_mars_never_favours_larger_abs_margin(margins, budget, tau):
    _never_favours(np.abs(margins), allocate("mars", margins, budget, None, tau=tau))


@quick
@given(margins=margins_st, budget=budgets, tau=st.floats(0, 5))
def test_mars_signed_never_favours_larger_signed_margin(margins, budget, tau):
    _never_favours(margins, allocate("mars-signed", margins, budget, None, tau=tau))


@pytest.mark.parametrize("shuffled, aimed", [("shuffled-mars", "mars"), ("shuffled-mars-signed", "mars-signed")])
@quick
@given(margins=margins_st, budget=budgets, seed=seeds, tau=st.floats(0, 5))
def test_shuffled_controls_are_their_twin_on_permuted_margins(shuffled, aimed, margins, budget, seed, tau):
    counts = allocate(shuffled, margins, budget, np.random.default_rng(seed), tau=tau, tau_scale="std")
    permuted = np.random.default_rng(seed).permutation(margins)
    np.testing.assert_array_equal(counts, allocate(aimed, permuted, budget, None, tau=tau, tau_scale="std"))


@pytest.mark.parametrize("shuffled, aimed", [("shuffled-mars", "mars"), ("shuffled-mars-signed", "mars-signed")])
def test_shuffled_controls_do_not_aim_at_low_margins(shuffled, aimed):
    margins = np.random.default_rng(0).normal(size=5000)
    rank = margins if STRATEGIES[aimed].signed else np.abs(margins)
    lowest = rank <= np.quantile(rank, 0.1)
    twin = allocate(aimed, margins, 20000, None, tau=3.0, tau_scale="std")
    draws = [allocate(shuffled, margins, 20000, np.random.default_rng(seed), tau=3.0, tau_scale="std")
             for seed in range(20)]
    for counts in draws:
        np.testing.assert_array_equal(np.sort(counts), np.sort(twin))  # the same concentration …
    assert twin[lowest].sum() / 20000 > 0.3
    shares = [counts[lowest].sum() / 20000 for counts in draws]
    assert np.mean(shares) == pytest.approx(0.1, abs=0.03)  # … on pairs drawn at random


@pytest.mark.parametrize("name", ["uniform", "west-of-n", "self-train"])
@quick
@given(margins=margins_st, budget=budgets, seed=seeds)
def test_uniform_counts_differ_by_at_most_one(name, margins, budget, seed):
    counts = allocate(name, margins, budget, np.random.default_rng(seed))
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ["mars", "mars-signed"])
@quick
@given(margins=arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e3, 1e3)), budget=budgets)
def test_tau_to_zero_tends_to_uniform(name, margins, budget):
    counts = allocate(name, margins, budget, None, tau=1e-9)
    assert counts.max() - counts.min() <= 1


def test_mars_hand_example():
    # v1 (|Δ|): q ∝ exp(-|Δ|) at tau 1; the mis-ranked pair (Δ = -3) gets as little as Δ = +3
    margins = np.array([0.0, 3.0, -3.0])
    q = np.exp(-np.abs(margins)) / np.exp(-np.abs(margins)).sum()  # 0.9094, 0.0453, 0.0453
    assert allocate("mars", margins, 100, None, tau=1.0).tolist() == [91, 5, 4]
    assert np.allclose(q * 100, [90.94, 4.53, 4.53], atol=0.01)
    # v2 (signed Δ): the mis-ranked pair now gets almost everything
    assert allocate("mars-signed", margins, 100, None, tau=1.0).tolist() == [5, 0, 95]
    # default tau = 0.1: exp(-0.3) = 0.741 -> 100/2.482 = 40.29, 29.85, 29.85
    assert allocate("mars", margins, 100, None).tolist() == [40, 30, 30]


def test_mars_is_stable_for_huge_margins():
    counts = allocate("mars-signed", [1e6, -1e6, 5e5], 10, None, tau=10.0)
    assert counts.tolist() == [0, 10, 0]


def test_uniform_spreads_the_leftover_across_rounds():
    rng = np.random.default_rng(0)
    totals = sum(allocate("uniform", np.zeros(10), 13, rng) for _ in range(200))
    # 200 rounds x 3 leftover units over 10 pairs = 60 expected each; lowest-index bias would give 200
    assert totals.sum() == 2600 and (totals - 200).max() < 100
    assert np.all(totals >= 200)


def test_available_mask_renormalises_over_pairs_with_variants():
    margins = np.array([0.0, 0.0, 1.0, 0.0])
    mask = np.array([True, False, True, True])
    counts = allocate("mars", margins, 30, None, available=mask, tau=1.0)
    assert counts[1] == 0 and counts.sum() == 30
    expected = np.zeros(4, np.int64)
    expected[mask] = allocate("mars", margins[mask], 30, None, tau=1.0)
    assert np.array_equal(counts, expected)
    assert allocate("none", margins, 30, None, available=np.zeros(4, bool)).sum() == 0
    with pytest.raises(ValueError, match="available: no pair"):
        allocate("uniform", margins, 5, None, available=np.zeros(4, bool))
    with pytest.raises(ValueError, match="available must be a bool mask"):
        allocate("uniform", margins, 5, None, available=[1, 0, 1, 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: allocate("marz", [0.0], 1, None), r"unknown strategy 'marz'; valid strategies: mars, mars-signed"),
        (lambda: allocate("mars", [0.0], -1, None), "budget must be >= 0"),
        (lambda: allocate("mars", [0.0], 1, None, tau=-0.1), "tau must be"),
        (lambda: allocate("mars-signed", [0.0], 1, None, tau=math.inf), "tau must be"),
        (lambda: allocate("adaboost", [0.0], 1, None, beta=-1), "beta must be"),
        (lambda: allocate("mars", [0.0, np.nan], 1, None), r"margins\[1\]"),
        (lambda: allocate("mars", [0.0], 1, None, temperature=1), "no setting 'temperature'; its settings: tau"),
        (lambda: allocate("uniform", [0.0], 1, None, tau=1), "no setting 'tau'; its settings: none"),
        (lambda: get_strategy("Mars"), "unknown strategy 'Mars'"),
    ],
)
def test_errors_name_the_setting(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_strategy_records():
    assert get_strategy("mars").defaults == {"tau": 0.1, "tau_scale": "raw"}
    assert get_strategy("mars-signed").defaults == {"tau": 0.5, "tau_scale": "raw"}
    assert get_strategy("adaboost").defaults == {"beta": 1.0}
    assert get_strategy("west-of-n").sampling_order == "highest-margin"
    assert get_strategy("uniform").sampling_order == "random"
    assert get_strategy("self-train").pseudo_labels and get_strategy("adaboost").reweights_base
    assert not get_strategy("none").augments and not get_strategy("adaboost").augments


def test_adaboost_weights():
    w = adaboost_weights([0.0, np.log(2.0)])  # exp(0) : exp(-ln 2) = 2 : 1, mean 1
    assert np.allclose(w, [4 / 3, 2 / 3])
    w = adaboost_weights([-1e6, 0.0, 1e6], beta=1.0)  # clipped, finite, mean 1, mis-ranked first
    assert np.all(np.isfinite(w)) and np.all(w > 0) and math.isclose(w.mean(), 1.0)
    assert w[0] > w[1] > w[2]
    assert np.allclose(adaboost_weights([3.0, -2.0], beta=0.0), 1.0)


def test_pseudo_label():
    assert pseudo_label([1.5, -0.2, 0.0]).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="NaN"):
        pseudo_label([0.1, np.nan])


# --- sampling ----------------------------------------------------------------------------------------

@st.composite
def counts_and_pools(draw):
    n = draw(st.integers(1, 30))
    pools = np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)))
    counts = np.array(draw(st.lists(st.integers(0, 90), min_size=n, max_size=n)))
    return counts, pools


@quick
@given(cp=counts_and_pools(), seed=seeds)
def test_sampling_replaces_only_beyond_the_pool(cp, seed):
    counts, pools = cp
    pair, variant = sample_variants(counts, pools, np.random.default_rng(seed))
    assert pair.dtype == variant.dtype == np.int64 and pair.size == counts.sum()
    assert np.all(np.diff(pair) >= 0) and np.array_equal(np.bincount(pair, minlength=counts.size), counts)
    for i in range(counts.size):
        seen = np.bincount(variant[pair == i], minlength=pools[i])
        assert seen.size == pools[i]  # all indices local to the pool
        full, rem = divmod(counts[i], pools[i])
        # every variant used `full` times, `rem` of them once more: no duplicates while count <= pool
        assert np.all((seen == full) | (seen == full + 1)) and np.sum(seen == full + 1) == rem


@quick
@given(cp=counts_and_pools(), seed=seeds)
def test_west_of_n_takes_highest_margins_first(cp, seed):
    counts, pools = cp
    rng = np.random.default_rng(seed)
    per_pair = [np.round(rng.normal(size=p), 1) for p in pools]  # rounding makes ties
    pair, variant = sample_variants(counts, pools, None, variant_margins=per_pair, order="highest-margin")
    flat = sample_variants(counts, pools, None, variant_margins=np.concatenate(per_pair), order="highest-margin")
    assert np.array_equal(variant, flat[1])
    for i in range(counts.size):
        full, rem = divmod(counts[i], pools[i])
        ranking = np.lexsort((np.arange(pools[i]), -per_pair[i]))  # by margin desc, ties lower index
        expected = np.full(pools[i], full)
        expected[ranking[:rem]] += 1
        assert np.array_equal(np.bincount(variant[pair == i], minlength=pools[i]), expected)


def test_west_of_n_hand_example():
    pair, variant = sample_variants(
        [2, 4, 0], [3, 2, 2], None, variant_margins=[[0.1, 0.9, 0.5], [2.0, 2.0], [0.0, 1.0]],
        order="highest-margin",
    )
    assert pair.tolist() == [0, 0, 1, 1, 1, 1]
    assert variant.tolist() == [1, 2, 0, 1, 0, 1]
    assert pool_offsets([3, 2, 2]).tolist() == [0, 3, 5]


@quick
@given(cp=counts_and_pools(), seed=seeds)
def test_sampling_is_reproducible_with_a_seed(cp, seed):
    counts, pools = cp
    a = sample_variants(counts, pools, np.random.default_rng(seed))
    b = sample_variants(counts, pools, np.random.default_rng(seed))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    margins = np.linspace(-2, 2, counts.size)
    assert np.array_equal(
        allocate("uniform", margins, 77, np.random.default_rng(seed)),
        allocate("uniform", margins, 77, np.random.default_rng(seed)),
    )


def test_sampling_errors():
    with pytest.raises(ValueError, match="pair 1 has count 2 but no variants"):
        sample_variants([1, 2], [3, 0], None)
    with pytest.raises(ValueError, match="order must be one of"):
        sample_variants([1], [3], None, order="best")
    with pytest.raises(ValueError, match="needs variant_margins"):
        sample_variants([1], [3], None, order="highest-margin")
    with pytest.raises(ValueError, match="only used with order='highest-margin'"):
        sample_variants([1], [3], None, variant_margins=[[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"variant_margins\[0\] has 2 margins but pair 0's pool has 3"):
        sample_variants([1], [3], None, variant_margins=[[1.0, 2.0]], order="highest-margin")
    with pytest.raises(ValueError, match="pair 1 must be finite"):
        sample_variants([1, 1], [1, 2], None, variant_margins=[0.0, 1.0, np.nan], order="highest-margin")
    with pytest.raises(ValueError, match=r"counts must be >= 0; counts\[0\]"):
        sample_variants([-1], [3], None)


def test_large_round_runs():
    """The 100k-pair, 25-variant, 200k-budget case (timed by hand at well under a second)."""
    rng = np.random.default_rng(0)
    n, pool, budget = 100_000, 25, 200_000
    margins = rng.normal(0, 3, n)
    for name in ("mars", "mars-signed", "west-of-n"):
        spec = get_strategy(name)
        counts = allocate(name, margins, budget, rng)
        vm = rng.normal(size=n * pool) if spec.selects_by_variant_margin else None
        pair, variant = sample_variants(counts, np.full(n, pool), rng, variant_margins=vm,
                                        order=spec.sampling_order)
        assert counts.sum() == pair.size == budget and variant.max() < pool


# --- summaries ---------------------------------------------------------------------------------------

def test_summaries_hand_examples():
    assert math.isclose(allocation_entropy([5, 5, 5, 5]), math.log(4))
    assert allocation_entropy([0, 7, 0]) == 0.0 and allocation_entropy([0, 0]) == 0.0
    assert math.isclose(allocation_entropy([1, 3]), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert effective_sample_size([5, 5, 5, 5]) == 4.0
    assert effective_sample_size([1, 3]) == 16 / 10 and effective_sample_size([0, 0]) == 0.0
    margins = np.array([0.5, -0.1, 3.0, 2.0, 1.0, -4.0, 0.9, 7.0, 1.5, 2.5, 0.2])  # N=11 -> 2 pairs
    counts = np.array([1, 6, 1, 1, 1, 1, 1, 1, 1, 1, 5])
    assert lowest_margin_decile_share(margins, counts) == 11 / 20  # |Δ| 0.1 and 0.2
    # ties: all |Δ| equal -> the two lowest indices
    assert lowest_margin_decile_share(np.zeros(11), counts) == 7 / 20
    assert lowest_margin_decile_share(margins, np.zeros(11, int)) == 0.0


@quick
@given(margins=margins_st, budget=st.integers(1, 3000))
def test_summaries_bounds(margins, budget):
    counts = allocate("mars", margins, budget, None)
    n_used = np.count_nonzero(counts)
    assert -1e-12 <= allocation_entropy(counts) <= math.log(n_used) + 1e-9
    assert 1 - 1e-9 <= effective_sample_size(counts) <= n_used + 1e-9
    assert 0.0 <= lowest_margin_decile_share(margins, counts) <= 1.0


# --- the scale-free temperature ----------------------------------------------------------------------


@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=60),
       st.floats(0.01, 100), st.sampled_from(["mars", "mars-signed"]))
@settings(max_examples=60, deadline=None)
def test_std_scale_makes_the_allocation_independent_of_the_margins_scale(margins, factor, strategy):
    margins = np.array(margins)
    base = allocate(strategy, margins, 500, None, tau=2.0, tau_scale="std")
    assert base.sum() == 500
    scaled = allocate(strategy, margins * factor, 500, None, tau=2.0, tau_scale="std")
    # The same allocation whatever the unit of the margins (up to float rounding at an exact remainder tie).
    assert np.abs(base - scaled).max() <= 1


def test_raw_scale_depends_on_the_margins_scale_and_is_the_default():
    margins = np.linspace(-1, 1, 100)
    assert np.array_equal(allocate("mars", margins, 1000, None, tau=2.0),
                          allocate("mars", margins, 1000, None, tau=2.0, tau_scale="raw"))
    small = allocate("mars", margins * 0.01, 1000, None, tau=2.0)
    large = allocate("mars", margins * 10, 1000, None, tau=2.0)
    assert small.max() - small.min() <= 1 < large.max() - large.min()


def test_std_scale_is_tau_times_margins_over_their_std():
    from marsrm.allocate import largest_remainder, scaled_margins

    margins = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 4.0])
    expected = largest_remainder(np.exp(-3.0 * margins / margins.std()), 600)
    assert np.array_equal(allocate("mars-signed", margins, 600, None, tau=3.0, tau_scale="std"), expected)
    assert np.allclose(scaled_margins(margins, "std"), margins / margins.std())
    assert np.array_equal(scaled_margins(np.zeros(4), "std"), np.zeros(4))  # a zero-initialised head: uniform


def test_unknown_tau_scale_is_refused():
    with pytest.raises(ValueError, match="tau_scale must be one of raw, std"):
        allocate("mars", [0.0, 1.0], 10, None, tau_scale="z")


def test_signed_decile_share_counts_the_most_mis_ranked_pairs():
    margins = np.array([-3.0, 0.1] + [2.0] * 18)  # 20 pairs: decile = 2 pairs
    counts = np.array([10, 0, 5] + [0] * 17)
    assert lowest_margin_decile_share(margins, counts, signed=True) == pytest.approx(10 / 15)  # pairs 0 and 1
    assert lowest_margin_decile_share(margins, counts) == pytest.approx(5 / 15)  # by |Δ|: pairs 1 and 2


def test_strategy_settings_pass_only_what_the_strategy_reads():
    assert strategy_settings("uniform", tau=1.0, tau_scale="std", beta=2.0) == {}
    assert strategy_settings("mars") == {"tau_scale": "raw"}  # τ left to the strategy's default
    assert strategy_settings("mars-signed", tau=0.5, tau_scale="std") == {"tau": 0.5, "tau_scale": "std"}
    assert strategy_settings("adaboost", tau=3.0, beta=2.0) == {"beta": 2.0}
