"""Tests for marsrm.metrics: hand-computed cases, sklearn as a reference, and properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import roc_auc_score

from marsrm import metrics
from marsrm.metrics import (
    REWARDBENCH_SECTIONS,
    Interval,
    bootstrap_ci,
    bt_hessian,
    curvature_summary,
    evaluate_margins,
    expected_calibration_error,
    length_baseline_accuracy,
    margin_snr,
    mean_margin,
    paired_bootstrap,
    pairwise_accuracy,
    rewardbench_sections,
    roc_auc,
    sigmoid_prime,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
# Few distinct values, so that ties are common.
coarse = st.integers(-3, 3).map(float)


def _sklearn_auc(chosen, rejected):
    labels = np.r_[np.ones(len(chosen)), np.zeros(len(rejected))]
    return roc_auc_score(labels, np.r_[chosen, rejected])


# --- accuracy and length baseline -------------------------------------------------------------------------


def test_accuracy_counts_ties_as_wrong():
    assert pairwise_accuracy([1.0, -1.0, 0.0, 2.0]) == 0.5
    assert pairwise_accuracy([0.0, 0.0]) == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")], [float("inf")]])
def test_accuracy_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="margins"):
        pairwise_accuracy(bad)


def test_length_baseline_longer_wins_and_equal_lengths_are_wrong():
    assert length_baseline_accuracy([10, 5, 7], [5, 10, 7]) == pytest.approx(1 / 3)


def test_length_baseline_does_not_wrap_unsigned_lengths():
    # uint8 3 - 5 would wrap to 254 > 0 if subtracted before conversion.
    chosen, rejected = np.array([3], dtype=np.uint8), np.array([5], dtype=np.uint8)
    assert length_baseline_accuracy(chosen, rejected) == 0.0


def test_length_baseline_needs_the_same_pairs():
    with pytest.raises(ValueError, match="same pairs"):
        length_baseline_accuracy([1, 2], [1, 2, 3])


# --- AUC ---------------------------------------------------------------------------------------------------


def test_auc_hand_computed_with_a_tie():
    # chosen 1 beats 0, loses to 2; chosen 2 beats 0, ties 2: (1 + 0 + 1 + 0.5) / 4
    assert roc_auc([1.0, 2.0], [0.0, 2.0]) == 0.625


def test_auc_identical_distributions_is_half():
    assert roc_auc([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == 0.5
    assert roc_auc([4.0, 4.0], [4.0, 4.0]) == 0.5


def test_auc_perfect_separation():
    assert roc_auc([5.0, 6.0, 7.0], [1.0, 2.0, 3.0]) == 1.0
    assert roc_auc([1.0, 2.0, 3.0], [5.0, 6.0, 7.0]) == 0.0


def test_auc_pools_across_pairs():
    # Every pair is ranked correctly, yet pooled scores overlap: pair 2's rejected beats pair 1's chosen.
    chosen, rejected = [1.0, 11.0], [0.0, 10.0]
    assert pairwise_accuracy(np.subtract(chosen, rejected)) == 1.0
    assert roc_auc(chosen, rejected) == 0.75


@pytest.mark.parametrize("seed", range(5))
def test_auc_agrees_with_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    chosen = np.round(rng.normal(0.3, 1.0, n), 1)  # rounding makes ties
    rejected = np.round(rng.normal(0.0, 1.0, n), 1)
    assert roc_auc(chosen, rejected) == pytest.approx(_sklearn_auc(chosen, rejected), abs=1e-12)


# --- margin statistics -------------------------------------------------------------------------------------


def test_mean_margin_and_snr_hand_computed():
    assert mean_margin([1.0, 2.0, 3.0]) == 2.0
    assert margin_snr([1.0, 2.0, 3.0]) == pytest.approx(2.0 / math.sqrt(2.0 / 3.0))  # std with ddof=0
    assert margin_snr([-1.0, -3.0]) == pytest.approx(-2.0)


def test_snr_is_zero_for_constant_margins():
    assert margin_snr([0.1, 0.1, 0.1]) == 0.0  # np.std of this is not exactly 0
    assert margin_snr([7.0]) == 0.0


def test_ece_hand_computed():
    # p = 0.5: both orientations share one bin, accuracy 0.5 = confidence 0.5
    assert expected_calibration_error([0.0]) == pytest.approx(0.0)
    # p = 0.75 (label 1) and 0.25 (label 0), in different bins: each off by 0.25
    assert expected_calibration_error([math.log(3.0)]) == pytest.approx(0.25)


def test_ece_bins_mix_both_orientations():
    # p = 0.52 (label 1) shares bin [0.5, 0.6) with 1 - 0.41 = 0.59 (label 0); 0.48 (label 0) shares
    # [0.4, 0.5) with 0.41 (label 1).  ECE = (|1 - 0.52 - 0.59| + |1 - 0.41 - 0.48|) / 4.
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert expected_calibration_error([logit(0.52), logit(0.41)]) == pytest.approx(0.055)


def _calibrated_margins(n, seed, scale=1.0):
    """Pairs whose human label follows σ(model margin / scale): calibrated when scale = 1."""
    rng = np.random.default_rng(seed)
    model_margin = rng.normal(0.0, 2.0, n)
    first_is_preferred = rng.random(n) < 1.0 / (1.0 + np.exp(-model_margin / scale))
    # Orient each pair so that "chosen" is the one the human preferred.
    return np.where(first_is_preferred, model_margin, -model_margin)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    assert expected_calibration_error(_calibrated_margins(50_000, seed=0)) < 0.01
    assert expected_calibration_error(_calibrated_margins(50_000, seed=0, scale=5.0)) > 0.15


def test_ece_is_not_degenerate():
    # Without symmetrisation every label would be 1 and ECE = 1 - mean(p) = 0.5 at Δ = 0.
    assert expected_calibration_error(np.zeros(10)) == pytest.approx(0.0)


# --- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(pairwise_accuracy, rng.normal(0.3, 1.0, 100), n_resamples=500)
    large = bootstrap_ci(pairwise_accuracy, rng.normal(0.3, 1.0, 10_000), n_resamples=500)
    for interval in (small, large):
        assert interval.low <= interval.estimate <= interval.high
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_bootstrap_level_nests_intervals():
    margins = np.random.default_rng(1).normal(0.2, 1.0, 300)
    narrow = bootstrap_ci(mean_margin, margins, level=0.5)
    wide = bootstrap_ci(mean_margin, margins, level=0.95)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_bootstrap_is_reproducible_from_its_seed():
    margins = np.random.default_rng(2).normal(0.2, 1.0, 200)
    assert bootstrap_ci(margin_snr, margins, seed=3) == bootstrap_ci(margin_snr, margins, seed=3)
    assert bootstrap_ci(margin_snr, margins, seed=3) != bootstrap_ci(margin_snr, margins, seed=4)


def test_bootstrap_resamples_pairs_jointly():
    # Resampling chosen and rejected independently would break the pairs and give accuracies < 1.
    chosen = np.arange(50.0)
    interval = bootstrap_ci(lambda c, r: pairwise_accuracy(c - r), chosen, chosen - 0.5, n_resamples=200)
    assert interval == Interval(1.0, 1.0, 1.0)


def test_bootstrap_takes_pair_arrays_of_any_rank():
    rng = np.random.default_rng(4)
    features, margins = rng.normal(size=(40, 3)), rng.normal(size=40)
    interval = bootstrap_ci(lambda f, m: float(f.shape[1] * m.size), features, margins, n_resamples=20)
    assert interval == Interval(120.0, 120.0, 120.0)
    with pytest.raises(ValueError, match="one non-zero length"):
        bootstrap_ci(lambda a, b: 0.0, np.ones(3), np.ones(4))


_STATISTICS = [
    (pairwise_accuracy, 1),
    (mean_margin, 1),
    (margin_snr, 1),
    (expected_calibration_error, 1),
    (roc_auc, 2),
    (length_baseline_accuracy, 2),
]


@pytest.mark.parametrize("stat_fn, n_arrays", _STATISTICS, ids=lambda x: getattr(x, "__name__", ""))
def test_vectorised_bootstrap_matches_calling_the_metric_per_resample(stat_fn, n_arrays):
    rng = np.random.default_rng(5)
    arrays = [np.round(rng.normal(size=150), 1) for _ in range(n_arrays)]  # with ties
    fast = bootstrap_ci(stat_fn, *arrays, n_resamples=100, seed=6)
    slow = bootstrap_ci(lambda *a: stat_fn(*a), *arrays, n_resamples=100, seed=6)
    assert fast.estimate == slow.estimate
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)


def test_vectorised_snr_handles_constant_resamples():
    margins = np.r_[np.zeros(8), 1.0, 2.0]  # many resamples draw only zeros
    fast = bootstrap_ci(margin_snr, margins, n_resamples=300, level=0.9)
    slow = bootstrap_ci(lambda m: margin_snr(m), margins, n_resamples=300, level=0.9)
    assert fast == pytest.approx(slow)
    assert fast.low == 0.0


def test_bootstrap_result_does_not_depend_on_the_block_size(monkeypatch):
    margins = np.random.default_rng(7).normal(size=100)
    whole = bootstrap_ci(roc_auc, margins, -margins, n_resamples=50)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 300)  # 3 resamples per block
    assert bootstrap_ci(roc_auc, margins, -margins, n_resamples=50) == whole


# --- paired comparison -------------------------------------------------------------------------------------


def test_paired_bootstrap_of_a_model_with_itself_is_exactly_zero():
    margins = np.random.default_rng(8).normal(0.1, 1.0, 500)
    for stat in (pairwise_accuracy, mean_margin, margin_snr, expected_calibration_error):
        result = paired_bootstrap(margins, margins.copy(), stat=stat)
        assert (result.estimate, result.low, result.high, result.share_a_better) == (0.0, 0.0, 0.0, 0.0)
        assert result.n == 500


def test_paired_bootstrap_recovers_a_known_difference():
    margins_a = np.random.default_rng(9).uniform(0.5, 2.0, 200)  # all right
    margins_b = margins_a.copy()
    margins_b[:20] *= -1  # model b gets 20 of the 200 pairs wrong
    result = paired_bootstrap(margins_a, margins_b)
    assert result.estimate == pytest.approx(0.1)
    assert 0.0 < result.low < 0.1 < result.high
    assert result.share_a_better == 1.0
    assert paired_bootstrap(margins_b, margins_a).estimate == pytest.approx(-0.1)


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(10)
    difficulty = rng.normal(0.0, 2.0, 1000)  # shared by both models: pairing cancels it
    margins_a, margins_b = difficulty + 0.1 + rng.normal(0, 0.3, 1000), difficulty + rng.normal(0, 0.3, 1000)
    paired = paired_bootstrap(margins_a, margins_b, stat=mean_margin, n_resamples=500)
    a = bootstrap_ci(mean_margin, margins_a, n_resamples=500, seed=1)
    b = bootstrap_ci(mean_margin, margins_b, n_resamples=500, seed=2)
    assert paired.low > 0  # the 0.1 improvement is resolved...
    assert a.low < b.high  # ...though the two separate intervals overlap
    assert paired.high - paired.low < (a.high - a.low) / 3


def test_paired_bootstrap_is_reproducible():
    rng = np.random.default_rng(11)
    margins_a, margins_b = rng.normal(0.2, 1, 300), rng.normal(0.0, 1, 300)
    assert paired_bootstrap(margins_a, margins_b, seed=5) == paired_bootstrap(margins_a, margins_b, seed=5)
    assert paired_bootstrap(margins_a, margins_b, seed=5) != paired_bootstrap(margins_a, margins_b, seed=6)


def test_paired_bootstrap_of_differences_is_the_one_level_bootstrap_of_the_mean_difference():
    rng = np.random.default_rng(12)
    shares_a, shares_b = rng.integers(0, 6, 300) / 5, rng.integers(0, 6, 300) / 5  # per pair: share of 5 seeds right
    paired = paired_bootstrap(shares_a, shares_b, stat=np.mean, of_differences=True, n_resamples=300, seed=4)
    assert paired.as_dict() == bootstrap_ci(np.mean, shares_a - shares_b, n_resamples=300, seed=4).as_dict()
    of_statistics = paired_bootstrap(shares_a, shares_b, stat=np.mean, n_resamples=300, seed=4)
    assert (of_statistics.estimate, of_statistics.low, of_statistics.high) == pytest.approx(
        (paired.estimate, paired.low, paired.high), abs=1e-12)  # the same draws; only the rounding differs


# --- the two-level bootstrap -------------------------------------------------------------------------------


def _resampled_means_one_by_one(values, n_resamples, seed):
    """The two-level bootstrap written out resample by resample: the contract of `resampled_means`."""
    unit_rng, run_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    means = []
    for _ in range(n_resamples):
        sample = values[unit_rng.integers(0, len(values), len(values))]
        for axis in range(1, values.ndim):
            if values.shape[axis] > 1:
                sample = np.take(sample, run_rng.integers(0, values.shape[axis], values.shape[axis]), axis=axis)
        means.append(sample.mean())
    return np.array(means)


@pytest.mark.parametrize("shape", [(40,), (40, 1), (40, 3), (33, 2, 3), (20, 1, 4), (300, 5)])
def test_resampled_means_redraws_units_then_each_run_axis(shape):
    values = np.random.default_rng(13).normal(size=shape)
    got = metrics.resampled_means(values, n_resamples=600, seed=7)
    np.testing.assert_allclose(got, _resampled_means_one_by_one(values, 600, 7), rtol=0, atol=1e-12)


def test_resampled_means_share_the_pair_draws_of_the_one_level_bootstrap():
    values = np.random.default_rng(14).normal(size=500)
    (one_level,) = metrics._replicates([(mean_margin, [values])], 700, 3)
    np.testing.assert_allclose(metrics.resampled_means(values, 700, 3), one_level, rtol=0, atol=1e-12)


def test_paired_seed_bootstrap_is_the_two_level_mean_difference():
    rng = np.random.default_rng(15)
    right_a, right_b = rng.random((200, 4)) > 0.3, rng.random((200, 4)) > 0.4
    two = metrics.paired_seed_bootstrap(right_a, right_b, n_resamples=400, seed=2)
    replicates = metrics.resampled_means(right_a.astype(float) - right_b, 400, 2)
    assert (two["low"], two["high"]) == metrics.percentiles(replicates, 0.95)
    assert two["value"] == pytest.approx(right_a.mean() - right_b.mean()) and two["n_seeds"] == 4
    with pytest.raises(ValueError, match="non-empty"):
        metrics.resampled_means(np.zeros((0, 3)))


# --- best-of-N win rates and reward units ------------------------------------------------------------------


def test_a_win_rate_stored_the_other_way_round_is_flipped():
    stored = {"b vs a": {"4": {"value": 0.3, "low": 0.2, "high": 0.45, "n": 9,
                               "gold_difference": {"estimate": -0.5, "low": -0.9, "high": -0.1,
                                                   "share_a_better": 0.01, "n": 9}}}}
    assert metrics.win_rate_of(stored, "b", "a", 4) is stored["b vs a"]["4"]
    flipped = metrics.win_rate_of(stored, "a", "b", 4)
    assert (flipped["value"], flipped["low"], flipped["high"]) == pytest.approx((0.7, 0.55, 0.8))
    assert flipped["gold_difference"] == pytest.approx({"estimate": 0.5, "low": 0.1, "high": 0.9,
                                                        "share_a_better": 0.99, "n": 9})
    assert metrics.win_rate_of(stored, "a", "b", 8) is None


def test_reward_normalization_gives_mean_zero_std_one_on_the_training_rewards():
    chosen, rejected = np.array([1.0, 3.0, 2.0]), np.array([0.0, -2.0, 2.0])
    units = metrics.reward_normalization(chosen, rejected)
    assert units == pytest.approx({"mean": 1.0, "std": np.std(np.r_[chosen, rejected])})
    normalized = metrics.normalize_rewards(np.r_[chosen, rejected], units)
    assert normalized.mean() == pytest.approx(0.0) and normalized.std() == pytest.approx(1.0)
    assert metrics.normalize_rewards(np.array([2.0]), {"mean": 2.0, "std": 0.0}) == pytest.approx([0.0])


# --- the full report and RewardBench sections ---------------------------------------------------------------


def _subset_margins(spec):
    """{subset: (n_pairs, n_correct)} -> (margins, subsets): correct pairs first in each subset."""
    margins, subsets = [], []
    for name, (n, n_correct) in spec.items():
        margins += [1.0] * n_correct + [-1.0] * (n - n_correct)
        subsets += [name] * n
    return np.array(margins), np.array(subsets, dtype=object)


def test_sections_weight_by_pair_count_and_split_reasoning_in_halves():
    margins, subsets = _subset_margins(
        {
            "alpacaeval-easy": (10, 10),
            "mt-bench-easy": (30, 15),
            "math-prm": (4, 1),
            "hep-python": (10, 10),
            "hep-go": (6, 0),
            "my-own-subset": (5, 0),
        }
    )
    sections = rewardbench_sections(margins, subsets)
    assert sections == pytest.approx(
        {
            "Chat": (10 + 15) / 40,  # not the subset mean (1 + 0.5) / 2
            "Reasoning": (1 / 4 + 10 / 16) / 2,  # math-prm vs all hep-* pooled
        }
    )  # Chat Hard and Safety have no pairs: omitted


def test_reasoning_is_the_present_half_alone():
    margins, subsets = _subset_margins({"hep-js": (4, 3), "hep-rust": (4, 1)})
    assert rewardbench_sections(margins, subsets) == {"Reasoning": 0.5}
    margins, subsets = _subset_margins({"math-prm": (4, 3)})
    assert rewardbench_sections(margins, subsets) == {"Reasoning": 0.75}


def test_section_map_is_rewardbench_v1():
    assert sum(len(names) for names in REWARDBENCH_SECTIONS.values()) == 23
    assert REWARDBENCH_SECTIONS["Chat Hard"][0] == "mt-bench-hard"
    assert "xstest-should-respond" in REWARDBENCH_SECTIONS["Safety"]


def test_evaluate_margins_reports_every_metric_with_its_interval():
    rng = np.random.default_rng(12)
    chosen, rejected = rng.normal(0.5, 1, 120), rng.normal(0, 1, 120)
    report = evaluate_margins(chosen, rejected, n_resamples=200, seed=3)
    margins = chosen - rejected
    expected = {
        "accuracy": bootstrap_ci(pairwise_accuracy, margins, n_resamples=200, seed=3),
        "auc": bootstrap_ci(roc_auc, chosen, rejected, n_resamples=200, seed=3),
        "mean_margin": bootstrap_ci(mean_margin, margins, n_resamples=200, seed=3),
        "margin_snr": bootstrap_ci(margin_snr, margins, n_resamples=200, seed=3),
        "ece": bootstrap_ci(expected_calibration_error, margins, n_resamples=200, seed=3),
    }
    assert report.keys() == {"n", *expected}
    assert report["n"] == 120
    for name, interval in expected.items():
        assert report[name] == interval.as_dict()


def test_evaluate_margins_with_lengths_and_subsets():
    margins, subsets = _subset_margins({"alpacaeval-easy": (6, 5), "math-prm": (4, 2), "notes": (3, 3)})
    subsets[-1] = None  # a pair without a subset counts only overall
    chosen, rejected = margins + 10.0, np.full(margins.size, 10.0)
    lengths = np.arange(margins.size)
    report = evaluate_margins(
        chosen, rejected, chosen_lengths=lengths, rejected_lengths=lengths[::-1], subsets=subsets, n_resamples=50
    )
    assert report["length_baseline_accuracy"]["value"] == pytest.approx(6 / 13)
    assert list(report["per_subset"]) == ["alpacaeval-easy", "math-prm", "notes"]
    assert report["per_subset"]["alpacaeval-easy"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert report["per_subset"]["notes"]["n"] == 2
    assert "length_baseline_accuracy" in report["per_subset"]["math-prm"]
    assert report["sections"] == pytest.approx({"Chat": 5 / 6, "Reasoning": 0.5})


def test_evaluate_margins_checks_its_optional_inputs():
    with pytest.raises(ValueError, match="both or neither"):
        evaluate_margins([1.0], [0.0], chosen_lengths=[3])
    with pytest.raises(ValueError, match="subsets"):
        evaluate_margins([1.0, 2.0], [0.0, 0.0], subsets=["a"])


# --- curvature ---------------------------------------------------------------------------------------------


def test_sigmoid_prime_peaks_at_zero_and_never_overflows():
    assert sigmoid_prime([0.0])[0] == 0.25
    with np.errstate(all="raise"):
        values = sigmoid_prime([-1000.0, -3.0, 3.0, 1000.0])
    assert values[1] == values[2] == pytest.approx(math.exp(-3) / (1 + math.exp(-3)) ** 2)
    assert values[0] == values[3] == 0.0


def _bt_loss(theta, differences):
    return np.mean(np.logaddexp(0.0, -differences @ theta))


def test_bt_hessian_matches_finite_differences_of_the_loss():
    rng = np.random.default_rng(13)
    features_chosen, features_rejected = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    theta = rng.normal(size=4)
    differences = features_chosen - features_rejected
    h, eye = 1e-4, np.eye(4)
    numeric = np.array(
        [
            [
                (
                    _bt_loss(theta + h * eye[j] + h * eye[k], differences)
                    - _bt_loss(theta + h * eye[j] - h * eye[k], differences)
                    - _bt_loss(theta - h * eye[j] + h * eye[k], differences)
                    + _bt_loss(theta - h * eye[j] - h * eye[k], differences)
                )
                / (4 * h * h)
                for k in range(4)
            ]
            for j in range(4)
        ]
    )
    np.testing.assert_allclose(bt_hessian(features_chosen, features_rejected, theta), numeric, atol=1e-6)


def test_bt_hessian_is_psd_and_l2_shifts_the_spectrum():
    rng = np.random.default_rng(14)
    features_chosen, features_rejected = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))  # rank <= 6 < d
    theta = rng.normal(size=10)
    hessian = bt_hessian(features_chosen, features_rejected, theta)
    eigenvalues = np.linalg.eigvalsh(hessian)
    assert eigenvalues.min() > -1e-12
    np.testing.assert_allclose(hessian, hessian.T)
    assert curvature_summary(hessian)["rank"] == 6
    shifted = bt_hessian(features_chosen, features_rejected, theta, l2=0.5)
    np.testing.assert_allclose(np.linalg.eigvalsh(shifted), eigenvalues + 0.5, atol=1e-12)


def test_bt_hessian_blocks_and_float32_features_give_the_same_matrix(monkeypatch):
    rng = np.random.default_rng(15)
    features_chosen, features_rejected = rng.normal(size=(11, 3)), rng.normal(size=(11, 3))
    theta = rng.normal(size=3)
    whole = bt_hessian(features_chosen, features_rejected, theta)
    monkeypatch.setattr(metrics, "_HESSIAN_CHUNK_ROWS", 4)
    np.testing.assert_allclose(bt_hessian(features_chosen, features_rejected, theta), whole, rtol=1e-12)
    as_float32 = bt_hessian(features_chosen.astype(np.float32), features_rejected.astype(np.float32), theta)
    np.testing.assert_allclose(as_float32, whole, rtol=1e-5)


def test_bt_hessian_at_zero_weights_is_a_quarter_of_the_difference_covariance():
    rng = np.random.default_rng(16)
    features_chosen, features_rejected = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    differences = features_chosen - features_rejected
    hessian = bt_hessian(features_chosen, features_rejected, np.zeros(3))
    np.testing.assert_allclose(hessian, 0.25 * differences.T @ differences / 20)


def test_curvature_summary_of_a_known_spectrum():
    summary = curvature_summary(np.diag([4.0, 1.0, 0.0]), margins=[0.0, 0.0])
    assert summary == {
        "largest_eigenvalue": 4.0,
        "smallest_nonzero_eigenvalue": 1.0,
        "condition_number": 4.0,
        "trace": 5.0,
        "rank": 2,
        "mean_sigmoid_prime": 0.25,
    }
    assert curvature_summary(np.diag([1.0, 1e-12]))["rank"] == 1  # below tol x largest
    assert curvature_summary(np.diag([1.0, 1e-12]), tol=1e-14)["rank"] == 2


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_curvature_rank_and_condition_do_not_depend_on_the_scale(scale):
    summary = curvature_summary(scale * np.diag([1.0, 1e-5, 0.0]))
    assert summary["rank"] == 2
    assert summary["condition_number"] == pytest.approx(1e5)


def test_curvature_summary_of_zero_and_without_margins():
    summary = curvature_summary(np.zeros((3, 3)))
    assert summary["rank"] == 0
    assert summary["smallest_nonzero_eigenvalue"] is None and summary["condition_number"] is None
    assert summary["mean_sigmoid_prime"] is None


def test_mean_sigmoid_prime_is_below_a_quarter_away_from_zero():
    margins = np.random.default_rng(17).normal(0.0, 2.0, 1000)
    assert curvature_summary(np.eye(2), margins=margins)["mean_sigmoid_prime"] < 0.25


# --- properties --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=finite))
def test_property_accuracy_and_ece_are_fractions(margins):
    assert 0.0 <= pairwise_accuracy(margins) <= 1.0
    assert 0.0 <= expected_calibration_error(margins) <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[arrays(np.float64, n, elements=coarse)] * 2)))
def test_property_auc_is_antisymmetric_and_matches_sklearn(pair):
    chosen, rejected = pair
    auc = roc_auc(chosen, rejected)
    assert 0.0 <= auc <= 1.0
    assert roc_auc(rejected, chosen) == pytest.approx(1.0 - auc, abs=1e-12)
    assert auc == pytest.approx(_sklearn_auc(chosen, rejected), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-50, 50)))
def test_property_sigmoid_prime_is_at_most_a_quarter(margins):
    values = sigmoid_prime(margins)
    assert np.all((values >= 0.0) & (values <= 0.25))
    np.testing.assert_allclose(values, sigmoid_prime(-margins))
