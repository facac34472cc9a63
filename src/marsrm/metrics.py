"""Evaluation metrics for reward models: accuracy, AUC, margin statistics, intervals, curvature.

Everything here is a pure numpy function of reward scores on preference pairs:

    chosen, rejected   rewards r(x, y+) and r(x, y-) on the same n pairs, shape (n,)
    margins            Δ = chosen - rejected, shape (n,)

Conventions shared by every function:
- A tie (Δ = 0) counts as wrong for accuracies; ties count half in the AUC (Mann–Whitney).
- Inputs must be non-empty, one-dimensional and finite; anything else raises ValueError naming the argument.
- Intervals come from the percentile bootstrap over pairs. Paired comparisons resample the same pair indices
  for both models, so the pair-to-pair difficulty cancels out of the difference.
- One bootstrap engine: every interval draws its pair (or prompt) indices from `_index_chunks`, seeded by
  `seed`; `_replicates` evaluates any statistic on them (one level), `resampled_means` adds a second level
  that redraws the runs (training seeds) of each model from a stream seeded by [seed, 1].

The definitions are written out in docs/METRICS.md.

Long because every metric and the one bootstrap engine behind all their intervals live together, so
every interval in the project is drawn the same way.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RELIABLE_SEEDS",
    "REWARDBENCH_SECTIONS",
    "Interval",
    "PairedComparison",
    "bootstrap_ci",
    "bt_hessian",
    "curvature_summary",
    "evaluate_margins",
    "expected_calibration_error",
    "length_baseline_accuracy",
    "margin_snr",
    "mean_margin",
    "normalize_rewards",
    "paired_bootstrap",
    "paired_seed_bootstrap",
    "percentiles",
    "resampled_means",
    "reward_normalization",
    "seed_interval",
    "bt_loss",
    "pairwise_accuracy",
    "rewardbench_sections",
    "roc_auc",
    "sigmoid_prime",
    "win_rate_of",
]

# RewardBench v1 (allenai/reward-bench): which subset belongs to which leaderboard section.
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}

# Bound on the elements of one (resamples x pairs) block in the bootstrap: ~4 MiB per float64 block.
_CHUNK_ELEMENTS = 2**19
# Rows of the difference matrix processed at once when forming the Hessian.
_HESSIAN_CHUNK_ROWS = 4096


# ---------------------------------------------------------------------------------------------------------
# Input checks and the logistic function


def _as_scores(values, name: str) -> np.ndarray:
    """`values` as a float64 array, checked to be 1-D, non-empty and finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name}: {bad.size} non-finite value(s), first at index {bad[0]} ({array[bad[0]]}); "
            "drop or fix those pairs before evaluating"
        )
    return array


def _as_pairs(first, second, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two score arrays on the same pairs: both checked, and of equal length."""
    a, b = _as_scores(first, names[0]), _as_scores(second, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must score the same pairs; got lengths {a.size} and {b.size}")
    return a, b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^-x), without overflow for any finite x."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---------------------------------------------------------------------------------------------------------
# Point metrics


def pairwise_accuracy(margins) -> float:
    """Fraction of pairs the model ranks correctly: mean(Δ > 0); a tie counts as wrong.

    margins: shape (n,), Δ = r(chosen) - r(rejected).  Returns a float in [0, 1].
    """
    margins = _as_scores(margins, "margins")
    return float(np.mean(margins > 0))


def roc_auc(chosen, rejected) -> float:
    """ROC-AUC of separating chosen rewards (label 1) from rejected rewards (label 0), pooled.

    chosen, rejected: shape (n,), rewards on the same pairs.  All 2n scores are pooled, so this is
    P(a random chosen reward > a random rejected reward), across pairs too, with ties counted half
    (the Mann–Whitney U statistic over n·n, computed from average ranks in O(n log n)).
    Returns a float in [0, 1]; roc_auc(a, b) = 1 - roc_auc(b, a).
    """
    chosen, rejected = _as_pairs(chosen, rejected, ("chosen", "rejected"))
    n_pos, n_neg = chosen.size, rejected.size
    scores = np.concatenate([chosen, rejected])
    _, tie_group, tie_sizes = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: the middle of the block of ranks its ties occupy.
    average_rank = np.cumsum(tie_sizes) - (tie_sizes - 1) / 2.0
    rank_sum_pos = average_rank[tie_group[:n_pos]].sum()
    u_statistic = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def bt_loss(margins) -> float:
    """Mean Bradley–Terry loss −log σ(Δ) over pairs (softplus(−Δ), stable for large |Δ|)."""
    m = _as_scores(margins, "margins")
    return float(np.mean(np.logaddexp(0.0, -m)))


def mean_margin(margins) -> float:
    """Mean margin mean(Δ), in reward units.  margins: shape (n,)."""
    return float(np.mean(_as_scores(margins, "margins")))


def margin_snr(margins) -> float:
    """Margin signal-to-noise ratio mean(Δ) / std(Δ), std with ddof=0.

    margins: shape (n,).  Returns 0.0 when std(Δ) = 0 (all margins equal, including n = 1): a constant
    margin carries no spread to measure against, and 0.0 keeps the value finite for reports.
    """
    margins = _as_scores(margins, "margins")
    # Test equality, not std == 0: a constant array's floating-point std can come out at 1e-17.
    if np.all(margins == margins[0]):
        return 0.0
    return float(np.mean(margins) / np.std(margins))


def _bin_index(probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin over [0, 1] of each probability; p = 1 goes in the last bin."""
    return np.minimum((probabilities * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(margins, n_bins: int = 10) -> float:
    """ECE of p = σ(Δ) read as the probability that the chosen response is preferred, symmetrised.

    margins: shape (n,).  In the chosen/rejected orientation every label is 1, which would make ECE just
    1 - mean(p); so each pair is scored in both orientations: (p, label 1) and (1 - p, label 0).
    The 2n predictions go into `n_bins` equal-width bins over [0, 1] and
    ECE = Σ_bins (bin count / 2n) · |accuracy in bin - mean confidence in bin|.  Returns a float in [0, 1].
    """
    margins = _as_scores(margins, "margins")
    if n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, got {n_bins}")
    confidence = np.concatenate([_sigmoid(margins), _sigmoid(-margins)])
    labels = np.concatenate([np.ones(margins.size), np.zeros(margins.size)])
    bins = _bin_index(confidence, n_bins)
    # count_b · |acc_b - conf_b| = |Σ_b labels - Σ_b confidence|, so bins never divide by their count.
    label_sums = np.bincount(bins, weights=labels, minlength=n_bins)
    confidence_sums = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(label_sums - confidence_sums).sum() / confidence.size)


def length_baseline_accuracy(chosen_lengths, rejected_lengths) -> float:
    """Accuracy of the rule "the longer response wins" on the same pairs; equal lengths count as wrong.

    chosen_lengths, rejected_lengths: shape (n,), lengths in any unit (characters, tokens).
    Returns a float in [0, 1]: the bar a reward model must clear to show it is not just counting length.
    """
    chosen_lengths, rejected_lengths = _as_pairs(
        chosen_lengths, rejected_lengths, ("chosen_lengths", "rejected_lengths")
    )
    return pairwise_accuracy(chosen_lengths - rejected_lengths)


# ---------------------------------------------------------------------------------------------------------
# Bootstrap intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap interval [low, high]."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """{"value", "low", "high"}: the form `evaluate_margins` reports."""
        return {"value": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PairedComparison:
    """stat(model a) - stat(model b) on the same pairs, with a paired percentile-bootstrap interval.

    share_a_better: fraction of resamples in which the difference is strictly > 0 (near 1: a is reliably
    better; 1 - share_a_better works like a one-sided p-value for "a is better").  n: number of pairs.
    """

    estimate: float
    low: float
    high: float
    share_a_better: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """{"value", "low", "high"}: the difference in the form `Interval.as_dict` gives."""
        return {"value": self.estimate, "low": self.low, "high": self.high}


def _index_chunks(n: int, n_resamples: int, seed: int, rows_per_chunk: int | None = None):
    """Yield blocks of resampled pair indices, shape (rows, n), n_resamples rows in all; seeded.

    The first level of every bootstrap here: resample r draws its n indices from one stream seeded by `seed`,
    in order, so the draws do not depend on the block size (numpy's stream continues across calls) and two
    read-outs with the same seed see the same resamples. rows_per_chunk: block height (default: ~2**19
    indices per block).
    """
    rng = np.random.default_rng(seed)
    rows_per_chunk = rows_per_chunk or max(1, min(n_resamples, _CHUNK_ELEMENTS // n))
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        yield rng.integers(0, n, size=(rows, n))


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each pair appears in each resample: (rows, n) indices -> (rows, n) float counts."""
    rows = indices.shape[0]
    offsets = (np.arange(rows)[:, None] * n + indices).ravel()
    return np.bincount(offsets, minlength=rows * n).reshape(rows, n).astype(np.float64)


# Fast paths for the module's own statistics.  A resample is a vector of counts w (how often each pair
# was drawn, Σ w = n), and these statistics are simple sums over pairs weighted by w, so a whole block of
# resamples is a few matrix products instead of one Python call each.  Each `_weighted_*(arrays)` does the
# per-dataset work once and returns a function mapping counts (rows, n) to statistics (rows,).
# tests/test_metrics.py checks every one against the plain function applied to the resampled arrays.


def _weighted_accuracy(margins: np.ndarray):
    wins = (margins > 0).astype(np.float64)
    return lambda counts: counts @ wins / margins.size


def _weighted_mean_margin(margins: np.ndarray):
    return lambda counts: counts @ margins / margins.size


def _weighted_margin_snr(margins: np.ndarray):
    # Centre first so that the variance E[x²] - E[x]² does not cancel catastrophically.
    centre = margins.mean()
    centred = margins - centre
    spread = np.mean(centred**2)

    def snr(counts):
        mean = counts @ centred / margins.size
        variance = counts @ centred**2 / margins.size - mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            values = (mean + centre) / np.sqrt(variance)
        # A (near-)constant resample's variance is lost to rounding: recompute it from its margins.
        for row in np.flatnonzero(variance <= 1e-8 * spread):
            values[row] = margin_snr(np.repeat(margins, counts[row].astype(np.int64)))
        return values

    return snr


def _weighted_ece(margins: np.ndarray, n_bins: int = 10):
    # Pair i adds (label - confidence) to two bins: 1 - p in bin(p) and -(1 - p) in bin(1 - p).
    # ECE = Σ_b |Σ_{i} w_i · residual_ib| / 2n, as in expected_calibration_error.
    p, one_minus_p = _sigmoid(margins), _sigmoid(-margins)
    rows = np.arange(margins.size)
    residual = np.zeros((margins.size, n_bins))
    np.add.at(residual, (rows, _bin_index(p, n_bins)), one_minus_p)
    np.add.at(residual, (rows, _bin_index(one_minus_p, n_bins)), -one_minus_p)
    return lambda counts: np.abs(counts @ residual).sum(axis=1) / (2 * margins.size)


def _weighted_roc_auc(chosen: np.ndarray, rejected: np.ndarray):
    # AUC of a resample = Σ_a w_a · (rejected weight below chosen_a + ½ rejected weight tied with it) / n².
    # With the rejected rewards sorted once, both weights are differences of one cumulative sum;
    # visiting the chosen rewards in sorted order keeps the look-ups into it sequential.
    n = chosen.size
    rejected_order, chosen_order = np.argsort(rejected), np.argsort(chosen)
    rejected_sorted, chosen_sorted = rejected[rejected_order], chosen[chosen_order]
    below_end = np.searchsorted(rejected_sorted, chosen_sorted, side="left")  # [0, below_end) < chosen
    tied_end = np.searchsorted(rejected_sorted, chosen_sorted, side="right")  # [below_end, tied_end) ties

    def auc(counts):
        cumulative = np.zeros((counts.shape[0], n + 1))
        np.cumsum(np.take(counts, rejected_order, axis=1), axis=1, out=cumulative[:, 1:])
        beaten_twice = np.take(cumulative, below_end, axis=1) + np.take(cumulative, tied_end, axis=1)
        return np.einsum("ij,ij->i", np.take(counts, chosen_order, axis=1), beaten_twice) / (2 * n * n)

    return auc


def _weighted_length_baseline(chosen_lengths: np.ndarray, rejected_lengths: np.ndarray):
    return _weighted_accuracy(chosen_lengths - rejected_lengths)


_WEIGHTED_STATS: dict[Callable, Callable] = {
    pairwise_accuracy: _weighted_accuracy,
    mean_margin: _weighted_mean_margin,
    margin_snr: _weighted_margin_snr,
    expected_calibration_error: _weighted_ece,
    roc_auc: _weighted_roc_auc,
    length_baseline_accuracy: _weighted_length_baseline,
}


def _check_arrays(arrays: Sequence) -> tuple[list[np.ndarray], int]:
    """The arrays to resample, as numpy arrays of one common length n >= 1 along axis 0."""
    if not arrays:
        raise ValueError("bootstrap needs at least one array to resample")
    arrays = [np.asarray(a) for a in arrays]
    lengths = {a.shape[0] if a.ndim else None for a in arrays}
    if len(lengths) != 1 or None in lengths or 0 in lengths:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"bootstrap arrays must share one non-zero length along axis 0; got shapes {shapes}")
    return arrays, lengths.pop()


def _replicates(statistics: Sequence[tuple[Callable, Sequence]], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Each (stat_fn, arrays) evaluated on the SAME n_resamples bootstrap resamples of the pairs.

    All arrays index the same n pairs along axis 0; a resample draws n pair indices and applies them to
    every array of every statistic jointly.  Returns one array of shape (n_resamples,) per statistic.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    checked = [_check_arrays(arrays) for _, arrays in statistics]
    n = checked[0][1]
    if any(length != n for _, length in checked):
        raise ValueError("bootstrap statistics must all be computed on the same pairs")
    evaluators = []  # one function per statistic: (indices, counts) of a block -> values of the block
    for (stat_fn, _), (arrays, _) in zip(statistics, checked):
        weighted = next((fast for plain, fast in _WEIGHTED_STATS.items() if plain is stat_fn), None)
        if weighted is not None and all(a.ndim == 1 for a in arrays):
            of_counts = weighted(*(a.astype(np.float64) for a in arrays))
            evaluators.append(lambda indices, counts, f=of_counts: f(counts))
        else:
            evaluators.append(
                lambda indices, counts, f=stat_fn, a=arrays: [f(*(x[row] for x in a)) for row in indices]
            )
    blocks: list[list] = [[] for _ in statistics]
    for indices in _index_chunks(n, n_resamples, seed):
        counts = _counts(indices, n)
        for evaluate, out in zip(evaluators, blocks):
            out.append(np.asarray(evaluate(indices, counts), dtype=np.float64))
    return [np.concatenate(out) for out in blocks]


def resampled_means(values, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of mean(values) over a two-level design, shape (n_resamples,).

    values: shape (n, k1, k2, ...): axis 0 indexes the units (pairs, prompts), each further axis the runs of one
    model (its training seeds; length 1 for a single run). Level one redraws the units with the pair draws
    of every bootstrap here (`_index_chunks`, seeded by `seed`: the same resamples as `bootstrap_ci` with that
    seed); level two redraws each run axis of length > 1 from a second stream seeded by [seed, 1], k indices
    per axis, axis by axis within a resample and resample by resample. So the interval counts the spread
    between runs as well as between units. Finite values only.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or 0 in values.shape:
        raise ValueError(f"values: expected a non-empty (units, runs...) array, got shape {values.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    n, runs = values.shape[0], values.shape[1:]
    flat = values.reshape(n, -1)
    run_rng = np.random.default_rng([seed, 1])
    replicates = np.empty(n_resamples)
    start = 0
    # Blocks of 256 resamples, the height the committed two-level intervals were computed with: the draws do not
    # depend on it, but a BLAS product may round differently for another block height.
    for indices in _index_chunks(n, n_resamples, seed, rows_per_chunk=256):
        size = indices.shape[0]
        per_run = (_counts(indices, n) @ flat / n).reshape(size, *runs)  # each resample's mean, run by run
        columns = [np.zeros((size, k), dtype=np.int64) for k in runs]
        for row in range(size):
            for axis, k in enumerate(runs):
                if k > 1:
                    columns[axis][row] = run_rng.integers(0, k, k)
        # Pick, in every resample, the redrawn run along each axis: an open grid (resample, run axis 1, ...).
        ones = [1] * len(runs)
        grid = [np.arange(size).reshape(size, *ones)]
        for axis, chosen in enumerate(columns):
            shape = ones.copy()
            shape[axis] = runs[axis]
            grid.append(chosen.reshape(size, *shape))
        replicates[start:start + size] = per_run[tuple(grid)].reshape(size, -1).mean(axis=1)
        start += size
    return replicates


def percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of bootstrap replicates: a percentile interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a confidence level strictly between 0 and 1, got {level}")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    stat_fn: Callable, *arrays, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile-bootstrap interval for stat_fn(*arrays), resampling pairs with replacement.

    arrays: one or more arrays over the same n pairs (axis 0 indexes pairs; e.g. chosen and rejected);
    each resample draws n pair indices and applies them to every array jointly.
    stat_fn(*arrays) -> float.  Returns Interval(estimate = stat_fn on the full data, low, high = the
    (1 - level)/2 and (1 + level)/2 quantiles of the resampled statistics).  Deterministic given seed.
    Resamples are processed in blocks of at most ~2**19 indices, so memory stays bounded for large n;
    this module's own metrics take a vectorised path, any other stat_fn is called once per resample.
    """
    arrays, _ = _check_arrays(arrays)
    estimate = float(stat_fn(*arrays))
    (replicates,) = _replicates([(stat_fn, arrays)], n_resamples, seed)
    low, high = percentiles(replicates, level)
    return Interval(estimate, low, high)


def paired_bootstrap(
    margins_a,
    margins_b,
    stat: Callable = pairwise_accuracy,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    of_differences: bool = False,
) -> PairedComparison:
    """Compare two reward models on the same pairs: stat(a) - stat(b) with a paired bootstrap interval.

    margins_a, margins_b: shape (n,), the two models' margins (or any per-pair scores) on the same pairs, in
    the same order.  stat(scores) -> float (default: pairwise accuracy).  Every resample uses the SAME pair
    indices for both models, so differences in pair difficulty cancel and the interval reflects only the
    models' disagreement.  of_differences: use stat(a - b) instead, for per-pair scores whose statistic is a
    mean (e.g. each pair's share of seeds that rank it right): the two agree up to rounding, and `marsrm
    compare`'s summaries (committed in results/) are the mean of the differences, bit for bit.
    Returns PairedComparison(estimate, low, high, share_a_better, n).
    """
    margins_a, margins_b = _as_pairs(margins_a, margins_b, ("margins_a", "margins_b"))
    if of_differences:
        (differences,) = _replicates([(stat, [margins_a - margins_b])], n_resamples, seed)
        estimate = float(stat(margins_a - margins_b))
    else:
        replicates_a, replicates_b = _replicates([(stat, [margins_a]), (stat, [margins_b])], n_resamples, seed)
        differences = replicates_a - replicates_b
        estimate = float(stat(margins_a) - stat(margins_b))
    low, high = percentiles(differences, level)
    return PairedComparison(
        estimate=estimate,
        low=low,
        high=high,
        share_a_better=float(np.mean(differences > 0)),
        n=int(margins_a.size),
    )


# Below this many seeds a Student-t interval over seeds is too wide, or too unstable, to lean on.
RELIABLE_SEEDS = 3


def seed_interval(values: np.ndarray, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean of per-seed values with a Student-t interval over seeds: {"mean", "low", "high", "n"} (no interval,
    low = high = mean, for a single seed).

    bounds: (lowest, highest) the metric can take, e.g. (0, 1) for accuracy and AUC, (-1, 1) for a difference
    of two accuracies; the interval is clipped to it (the t-interval is symmetric and knows no range).
    Fewer than `RELIABLE_SEEDS` values make the interval unreliable; reports say so.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": len(values)}
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def paired_seed_bootstrap(correct_a, correct_b, n_resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """Accuracy difference of two strategies over held-out pairs AND seeds, with a two-level paired interval.

    correct_a, correct_b: shape (n_pairs, n_seeds), 1 where seed k's model ranks pair i right; column k of both
    comes from the same training seed. Each resample redraws the pairs (the same rows for both) and the seeds
    (the same columns for both), so the interval counts the spread between seeds as well as between pairs.
    Returns {"value", "low", "high", "se", "mde80", "n_pairs", "n_seeds"}: se is the replicates' standard
    deviation; mde80 = (z_0.975 + z_0.8)·se ≈ 2.80·se, the smallest true difference this design detects with 80%
    power at the 5% level (a normal approximation).
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or 0 in a.shape:
        raise ValueError(f"correct_a and correct_b must be (pairs, seeds) arrays of one shape; got {a.shape}, "
                         f"{b.shape}")
    difference = a - b
    n, k = difference.shape
    replicates = resampled_means(difference, n_resamples, seed)
    low, high = percentiles(replicates, level)
    se = float(replicates.std(ddof=1)) if n_resamples > 1 else 0.0
    return {"value": float(difference.mean()), "low": low, "high": high, "se": se, "mde80": 2.8016 * se,
            "n_pairs": int(n), "n_seeds": int(k)}


def win_rate_of(win_rates: dict, a: str, b: str, n) -> dict | None:
    """A's win rate against B at N from a best-of-N result's "win_rate", whichever way round it is stored.

    win_rates: {"A vs B": {str(N): {"value", "low", "high", ..., "gold_difference"?}}}; an entry stored as
    "B vs A" is flipped (value → 1 - value, the interval mirrored, the gold difference negated).
    Returns None when neither order is stored at N.
    """
    entry = win_rates.get(f"{a} vs {b}", {}).get(str(n))
    if entry is not None:
        return entry
    entry = win_rates.get(f"{b} vs {a}", {}).get(str(n))
    if entry is None or entry["value"] is None:
        return entry
    flipped = {**entry, "value": 1 - entry["value"], "low": 1 - entry["high"], "high": 1 - entry["low"]}
    if "gold_difference" in entry:
        d = entry["gold_difference"]
        flipped["gold_difference"] = {**d, "estimate": -d["estimate"], "low": -d["high"], "high": -d["low"],
                                      "share_a_better": 1 - d["share_a_better"]}
    return flipped


# ---------------------------------------------------------------------------------------------------------
# Reward units


def reward_normalization(chosen, rejected) -> dict[str, float]:
    """{"mean": μ, "std": σ} of all 2n rewards of the training pairs (std with ddof=0): a model's reward units.

    chosen, rejected: shape (n,), the trained model's rewards on its training pairs; they are pooled as given
    (no dtype change).  `normalize_rewards` reads rewards in these units.
    """
    rewards = np.concatenate([chosen, rejected])
    return {"mean": float(rewards.mean()), "std": float(rewards.std())}


def normalize_rewards(rewards, normalization: dict) -> np.ndarray:
    """(r - μ) / σ with {"mean": μ, "std": σ} from `reward_normalization`; σ below 1e-12 counts as 1e-12."""
    return (rewards - normalization["mean"]) / max(normalization["std"], 1e-12)


# ---------------------------------------------------------------------------------------------------------
# The full report


def rewardbench_sections(margins, subsets) -> dict[str, float]:
    """RewardBench v1 section scores (Chat, Chat Hard, Safety, Reasoning) from per-pair margins.

    margins: shape (n,); subsets: shape (n,), each pair's RewardBench subset name (others are ignored).
    A section score is the mean of its subsets' accuracies weighted by each subset's number of pairs,
    i.e. the accuracy over all its pairs pooled, except Reasoning, where math-prm counts as much as all the
    hep-* (code) subsets together: Reasoning = (acc(math-prm) + acc(all hep-* pairs pooled)) / 2
    (RewardBench v1 weights math-prm with 984 = 6 x 164, the size of the code subsets).  If only one of
    the two halves is present, Reasoning is that half.  Sections with none of their subsets present are
    omitted.  Weights are the observed pair counts, which match RewardBench's for its full test set.
    Returns {section: accuracy in [0, 1]}.
    """
    margins = _as_scores(margins, "margins")
    subsets = np.asarray(subsets, dtype=object)
    if subsets.shape != margins.shape:
        raise ValueError(f"subsets: expected one subset name per pair ({margins.size}), got shape {subsets.shape}")
    pairs_in = Counter(subsets.tolist())
    correct_in = Counter(subsets[margins > 0].tolist())

    def pooled_accuracy(names) -> float | None:
        total = sum(pairs_in[name] for name in names)
        return sum(correct_in[name] for name in names) / total if total else None

    scores: dict[str, float] = {}
    for section, names in REWARDBENCH_SECTIONS.items():
        if section == "Reasoning":
            halves = [pooled_accuracy(["math-prm"]), pooled_accuracy([s for s in names if s.startswith("hep-")])]
            present = [half for half in halves if half is not None]
            score = float(np.mean(present)) if present else None
        else:
            score = pooled_accuracy(names)
        if score is not None:
            scores[section] = score
    return scores


def evaluate_margins(
    chosen,
    rejected,
    *,
    chosen_lengths=None,
    rejected_lengths=None,
    subsets=None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """The full evaluation report of one reward model on n held-out pairs.

    chosen, rejected: shape (n,), rewards on the same pairs.  chosen_lengths, rejected_lengths: optional,
    shape (n,), response lengths.  subsets: optional, shape (n,), a subset name per pair; pairs whose subset
    is None count only in the overall metrics.
    Returns a JSON-ready dict:
        n                         number of pairs
        accuracy, auc, mean_margin, margin_snr, ece
                                  each {"value", "low", "high"}: 95% percentile-bootstrap interval
        length_baseline_accuracy  {"value", "low", "high"}; only when both length arrays are given
        per_subset                {subset: the keys above for that subset's pairs}; only with subsets
        sections                  rewardbench_sections(...) (may be empty); only with subsets
    All intervals are computed on the same resampled pairs, so each equals bootstrap_ci(metric, ...,
    n_resamples=n_resamples, seed=seed) on its own.
    """
    chosen, rejected = _as_pairs(chosen, rejected, ("chosen", "rejected"))
    n = chosen.size
    margins = chosen - rejected
    statistics = {
        "accuracy": (pairwise_accuracy, [margins]),
        "auc": (roc_auc, [chosen, rejected]),
        "mean_margin": (mean_margin, [margins]),
        "margin_snr": (margin_snr, [margins]),
        "ece": (expected_calibration_error, [margins]),
    }
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("chosen_lengths and rejected_lengths: give both or neither")
    if chosen_lengths is not None:
        chosen_lengths, rejected_lengths = _as_pairs(
            chosen_lengths, rejected_lengths, ("chosen_lengths", "rejected_lengths")
        )
        if chosen_lengths.size != n:
            raise ValueError(f"chosen_lengths: expected one length per pair ({n}), got {chosen_lengths.size}")
        statistics["length_baseline_accuracy"] = (length_baseline_accuracy, [chosen_lengths, rejected_lengths])
    if subsets is not None:
        subsets = np.asarray(subsets, dtype=object)
        if subsets.shape != (n,):
            raise ValueError(f"subsets: expected one subset name per pair ({n}), got shape {subsets.shape}")

    report: dict = {"n": int(n)}
    replicates = _replicates(list(statistics.values()), n_resamples, seed)
    for (name, (stat_fn, arrays)), resampled in zip(statistics.items(), replicates):
        low, high = percentiles(resampled, 0.95)
        report[name] = Interval(float(stat_fn(*arrays)), low, high).as_dict()
    if subsets is not None:
        per_subset = {}
        for name in dict.fromkeys(s for s in subsets if s is not None):  # first-appearance order
            member = subsets == name
            per_subset[str(name)] = evaluate_margins(
                chosen[member],
                rejected[member],
                chosen_lengths=None if chosen_lengths is None else chosen_lengths[member],
                rejected_lengths=None if rejected_lengths is None else rejected_lengths[member],
                n_resamples=n_resamples,
                seed=seed,
            )
        report["per_subset"] = per_subset
        report["sections"] = rewardbench_sections(margins, subsets)
    return report


# ---------------------------------------------------------------------------------------------------------
# Curvature of the Bradley–Terry loss (the theory in MARS.md)


def sigmoid_prime(margins) -> np.ndarray:
    """σ'(Δ) = σ(Δ)(1 - σ(Δ)) elementwise: the Bradley–Terry curvature weight of each pair.

    margins: shape (n,).  Returns shape (n,), values in (0, 1/4], exactly 1/4 at Δ = 0.
    """
    margins = _as_scores(margins, "margins")
    # σ(Δ)σ(-Δ) = 1 / (4 cosh²(Δ/2)): cosh >= 1 keeps it <= 1/4 even after rounding, and for |Δ| > ~1400,
    # where cosh² overflows to inf, it gives 0, the true value to within 1e-300.
    with np.errstate(over="ignore"):
        return 0.25 / np.cosh(0.5 * margins) ** 2


def bt_hessian(features_chosen, features_rejected, weights, l2: float = 0.0) -> np.ndarray:
    """Hessian of the mean Bradley–Terry loss of a linear reward r = θᵀφ with respect to θ.

    features_chosen, features_rejected: shape (n, d), φ(x, y+) and φ(x, y-) (e.g. frozen embeddings);
    weights: shape (d,), θ.  A bias term cancels in Δ and has no curvature, so it is not an argument.
    H = (1/n) Σ_i σ'(Δ_i) d_i d_iᵀ + l2·I, with d_i = φ_i+ - φ_i- and Δ_i = θᵀd_i.  Returns shape (d, d),
    symmetric positive semi-definite (definite when l2 > 0).  Formed as (D·√σ')ᵀ(D·√σ') in row blocks:
    O(n d²) time, O(block·d + d²) extra memory.
    """
    features_chosen = np.asarray(features_chosen)
    features_rejected = np.asarray(features_rejected)
    weights = np.asarray(weights, dtype=np.float64)
    if features_chosen.ndim != 2 or features_chosen.shape != features_rejected.shape or features_chosen.shape[0] == 0:
        raise ValueError(
            "features_chosen and features_rejected: expected two non-empty (n, d) arrays of the same shape, "
            f"got {features_chosen.shape} and {features_rejected.shape}"
        )
    n, d = features_chosen.shape
    if weights.shape != (d,):
        raise ValueError(f"weights: expected shape ({d},) to match the features, got {weights.shape}")
    if l2 < 0:
        raise ValueError(f"l2: expected a non-negative regularisation strength, got {l2}")
    hessian = np.zeros((d, d))
    for start in range(0, n, _HESSIAN_CHUNK_ROWS):
        block = slice(start, start + _HESSIAN_CHUNK_ROWS)
        differences = features_chosen[block].astype(np.float64) - features_rejected[block]
        scaled = differences * np.sqrt(sigmoid_prime(differences @ weights))[:, None]
        hessian += scaled.T @ scaled
    hessian /= n
    hessian[np.diag_indices(d)] += l2
    return hessian


def curvature_summary(hessian, tol: float = 1e-10, margins=None) -> dict:
    """Spectrum summary of a symmetric PSD Hessian (e.g. from bt_hessian).

    hessian: shape (d, d).  An eigenvalue counts as non-zero when it exceeds tol x the largest.
    Returns {"largest_eigenvalue", "smallest_nonzero_eigenvalue", "condition_number" (their ratio),
    "trace", "rank", "mean_sigmoid_prime"}.  mean_sigmoid_prime is mean σ'(margins) (at most 1/4) when
    margins of shape (n,) are given, else None.  For an all-zero Hessian, rank is 0 and the eigenvalue
    ratio quantities are None.
    """
    hessian = np.asarray(hessian, dtype=np.float64)
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1] or hessian.shape[0] == 0:
        raise ValueError(f"hessian: expected a non-empty square matrix, got shape {hessian.shape}")
    eigenvalues = np.linalg.eigvalsh(hessian)
    largest = float(eigenvalues[-1])
    nonzero = eigenvalues[eigenvalues > tol * largest] if largest > 0 else eigenvalues[:0]
    smallest = float(nonzero[0]) if nonzero.size else None
    return {
        "largest_eigenvalue": largest,
        "smallest_nonzero_eigenvalue": smallest,
        "condition_number": largest / smallest if smallest else None,
        "trace": float(np.trace(hessian)),
        "rank": int(nonzero.size),
        "mean_sigmoid_prime": None if margins is None else float(np.mean(sigmoid_prime(margins))),
    }
