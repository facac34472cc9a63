"""Margins -> integer budgets -> sampled variants: step 2b-2d of the MARS round (pure numpy).

A strategy is one pure function ``fn(margins, budget, rng, **settings) -> counts``: ``margins`` is the
signed Δ_i = r(x_i, y_i+) - r(x_i, y_i-) of each base pair (shape (N,)), ``budget`` the number of
synthetic pairs this round, ``counts`` an int64 array of shape (N,) that sums to ``budget`` (or is all
zero for strategies that do not augment). ``STRATEGIES`` maps each name in MARS.md to a `Strategy` that
also says what else the loop has to do for it (pick variants by margin, pseudo-label, reweight the base
set), so the loop asks the record instead of branching on names.

``sample_variants`` turns counts into concrete variants of each pair's pool, and the summary
statistics at the bottom describe one round's allocation.

Long because every strategy of MARS.md lives here, each a small pure function beside the table
(`STRATEGIES`) that names it and says what the loop must do for it.
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "STRATEGIES",
    "Strategy",
    "adaboost",
    "adaboost_weights",
    "allocate",
    "allocation_entropy",
    "effective_sample_size",
    "get_strategy",
    "largest_remainder",
    "lowest_margin_decile_share",
    "mars",
    "mars_signed",
    "no_augmentation",
    "pool_offsets",
    "pseudo_label",
    "sample_variants",
    "scaled_margins",
    "shuffled_mars",
    "shuffled_mars_signed",
    "uniform",
]

# exp(±50) keeps every AdaBoost weight a normal float64 after the max is subtracted.
_EXP_CLIP = 50.0
SAMPLING_ORDERS = ("random", "highest-margin")


# ---------------------------------------------------------------------------------------------------
# Rounding


def largest_remainder(weights, budget) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum to ``budget`` exactly (Hamilton's method).

    weights: shape (N,), finite, >= 0, any scale (normalised here). budget: int >= 0.
    Each pair gets floor(budget·q_i); the units left over go one each to the largest fractional
    remainders, ties to the lower index. If every weight is 0 (e.g. all of exp(...) underflowed) the
    weights fall back to uniform, so the remainder goes to the lowest indices.
    Returns int64, shape (N,).
    """
    budget = _as_budget(budget)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError(f"weights must be 1-D (one per pair), got shape {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"weights must be finite and >= 0; weights[{i}] = {weights[i]}")
    n = weights.size
    if n == 0:
        if budget:
            raise ValueError(f"cannot place budget {budget} over 0 pairs")
        return np.zeros(0, dtype=np.int64)
    top = weights.max()
    # Dividing by the max first keeps the sum finite even for weights near the float64 limit.
    q = weights / top if top > 0 else np.ones(n)
    exact = budget * (q / q.sum())
    floors = np.floor(exact)
    frac = exact - floors
    counts = floors.astype(np.int64)
    short = budget - int(counts.sum())
    if short >= 0:  # the normal case: 0 <= short < N
        order = np.argsort(-frac, kind="stable")  # stable: equal remainders -> lower index first
        counts += short // n
        counts[order[: short % n]] += 1
    else:  # float rounding at huge budgets overshot: take units back from the smallest remainders
        donors = np.flatnonzero(counts > 0)
        donors = donors[np.argsort(frac[donors], kind="stable")]
        counts[donors[:-short]] -= 1
    return counts


# ---------------------------------------------------------------------------------------------------
# Strategies: fn(margins, budget, rng, **settings) -> counts


TAU_SCALES = ("raw", "std")


def scaled_margins(margins, tau_scale: str = "raw") -> np.ndarray:
    """The margins the temperature multiplies: as they are ("raw", the paper's form) or divided by this round's
    standard deviation of Δ ("std"), so that τ means the same concentration on every backbone, head and round.

    A round whose margins are all equal (std 0, e.g. a zero-initialised head) gives all zeros: a uniform share.
    """
    margins = _as_margins(margins)
    if tau_scale == "raw":
        return margins
    if tau_scale != "std":
        raise ValueError(f"tau_scale must be one of {', '.join(TAU_SCALES)}; got {tau_scale!r}")
    spread = float(margins.std()) if margins.size else 0.0
    return margins / spread if spread > 0 else np.zeros_like(margins)


def mars(margins, budget, rng, *, tau: float = 0.1, tau_scale: str = "raw") -> np.ndarray:
    """MARS v1: q_i = softmax_i(-tau·|Δ_i|), rounded by `largest_remainder`; low |margin| gets most.

    tau_scale "std" uses |Δ_i| / std(Δ) instead of |Δ_i| (see `scaled_margins`).
    """
    margins, budget = _as_margins(margins), _as_budget(budget)
    tau = _as_setting("tau", tau)
    return largest_remainder(_softmax_weights(-tau * np.abs(scaled_margins(margins, tau_scale))), budget)


def mars_signed(margins, budget, rng, *, tau: float = 0.5, tau_scale: str = "raw") -> np.ndarray:
    """MARS v2: q_i = softmax_i(-tau·Δ_i) in the signed margin, so mis-ranked pairs (Δ < 0) get most.

    tau_scale "std" uses Δ_i / std(Δ) instead of Δ_i (see `scaled_margins`).
    """
    margins, budget = _as_margins(margins), _as_budget(budget)
    tau = _as_setting("tau", tau)
    return largest_remainder(_softmax_weights(-tau * scaled_margins(margins, tau_scale)), budget)


def shuffled_mars(margins, budget, rng, *, tau: float = 0.1, tau_scale: str = "raw") -> np.ndarray:
    """A control for `mars`: its weights on the margins permuted at random across the pairs (drawn by ``rng``).

    The budget is exactly as concentrated as `mars` would make it (the same weights) but lands on random pairs,
    so comparing the two separates what concentrating the budget does from what aiming it at low margins does.
    """
    margins = _as_margins(margins)
    return mars(_as_rng(rng).permutation(margins), budget, rng, tau=tau, tau_scale=tau_scale)


def shuffled_mars_signed(margins, budget, rng, *, tau: float = 0.5, tau_scale: str = "raw") -> np.ndarray:
    """A control for `mars-signed`: its weights on the margins permuted at random across the pairs (see
    `shuffled_mars`)."""
    margins = _as_margins(margins)
    return mars_signed(_as_rng(rng).permutation(margins), budget, rng, tau=tau, tau_scale=tau_scale)


def uniform(margins, budget, rng) -> np.ndarray:
    """q_i = 1/N: every pair gets budget // N; the budget % N leftover units go to pairs drawn by ``rng``.

    Counts differ by at most 1, and no index is favoured across rounds (plain largest-remainder
    rounding would always hand the leftover to the lowest indices).
    """
    margins, budget = _as_margins(margins), _as_budget(budget)
    n = margins.size
    if n == 0:
        return largest_remainder(margins, budget)  # empty, or the 0-pairs error
    counts = np.full(n, budget // n, dtype=np.int64)
    counts[_as_rng(rng).choice(n, size=budget % n, replace=False)] += 1
    return counts


def no_augmentation(margins, budget, rng) -> np.ndarray:
    """The 'none' baseline: all counts 0, the model trains on the base set only."""
    margins, budget = _as_margins(margins), _as_budget(budget)
    return np.zeros(margins.shape, dtype=np.int64)


def adaboost(margins, budget, rng, *, beta: float = 1.0) -> np.ndarray:
    """AdaBoost-style baseline: no augmentation (all counts 0); the base pairs are reweighted instead,
    by ``adaboost_weights(margins, beta=beta)``."""
    _as_setting("beta", beta)
    return no_augmentation(margins, budget, rng)


def adaboost_weights(margins, *, beta: float = 1.0) -> np.ndarray:
    """Per-base-pair loss weights w_i ∝ exp(-beta·Δ_i), normalised to mean 1; shape (N,), float64.

    The exponent is clipped to ±50 and shifted by its max, so no weight overflows or becomes 0.
    """
    margins = _as_margins(margins)
    beta = _as_setting("beta", beta)
    if margins.size == 0:
        return np.zeros(0)
    z = np.clip(-beta * margins, -_EXP_CLIP, _EXP_CLIP)
    w = np.exp(z - z.max())
    return w * (w.size / w.sum())


def pseudo_label(variant_margins) -> np.ndarray:
    """Self-training labels: True keeps a variant's orientation, False swaps chosen and rejected.

    variant_margins: the current model's Δ on each drawn variant, any shape. True where Δ > 0 (the
    model ranks the inherited "chosen" above "rejected"), and also at a tie Δ == 0: with no opinion the
    model has nothing to override the inherited label with (this matters for a zero-initialised head,
    whose margins are all exactly 0 in round 1).
    """
    m = np.asarray(variant_margins, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(m.ravel()))
    if bad.size:
        raise ValueError(f"variant_margins must not be NaN; flat index {int(bad[0])} is NaN")
    return m >= 0


@dataclass(frozen=True)
class Strategy:
    """One allocation strategy and what the loop must do beside allocating for it.

    augments: counts sum to the budget (False: all zero, no synthetic pairs).
    selects_by_variant_margin: sample each pair's variants by the current model's margin, highest
        first (West-of-N), instead of at random.
    pseudo_labels: orient each drawn variant by `pseudo_label` of its margin (self-training).
    reweights_base: weight the base pairs' loss by `adaboost_weights`.
    signed: allocates by the signed margin (mis-ranked pairs first), so its concentration is read on the
        signed margins rather than on |Δ|.
    control_for: the strategy whose concentration this one spends on random pairs (a shuffled control), so a
        comparison of the two measures what aiming the budget did.
    """

    name: str
    fn: Callable[..., np.ndarray]
    doc: str
    augments: bool = True
    selects_by_variant_margin: bool = False
    pseudo_labels: bool = False
    reweights_base: bool = False
    signed: bool = False
    control_for: str | None = None

    @property
    def defaults(self) -> dict:
        """The strategy's settings and their defaults (its function's keyword-only arguments)."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def sampling_order(self) -> str:
        """The ``order`` to pass to `sample_variants` for this strategy."""
        return "highest-margin" if self.selects_by_variant_margin else "random"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("mars", mars, "MARS v1: softmax(-tau·|margin|)"),
        Strategy("mars-signed", mars_signed, "MARS v2: softmax(-tau·margin), mis-ranked pairs first", signed=True),
        Strategy("shuffled-mars", shuffled_mars, "control: mars' weights on margins permuted across pairs "
                 "(the same concentration, no aim)", control_for="mars"),
        Strategy("shuffled-mars-signed", shuffled_mars_signed, "control: mars-signed's weights on margins "
                 "permuted across pairs", signed=True, control_for="mars-signed"),
        Strategy("uniform", uniform, "the same budget for every pair"),
        Strategy("west-of-n", uniform, "uniform budget; each pair's highest-margin variants",
                 selects_by_variant_margin=True),
        Strategy("self-train", uniform, "uniform budget; variants labelled by the current model",
                 pseudo_labels=True),
        Strategy("none", no_augmentation, "no augmentation", augments=False),
        Strategy("adaboost", adaboost, "no augmentation; base pairs reweighted by exp(-beta·margin)",
                 augments=False, reweights_base=True),
    )
}


def get_strategy(name: str) -> Strategy:
    """The `Strategy` registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}"
        ) from None


def allocate(strategy: str, margins, budget, rng, *, available=None, **settings) -> np.ndarray:
    """Counts for one round: run strategy ``strategy`` on ``margins`` (shape (N,)) with ``budget``.

    settings: the strategy's own settings (see ``STRATEGIES[name].defaults``); unknown ones are an error.
    available: optional bool mask, shape (N,); pairs where it is False (no variants in their pool) get
        0 and the strategy runs on the others only, so their shares renormalise among themselves.
    rng: a numpy Generator (or a seed) for strategies that draw; deterministic ones ignore it.
    Returns int64 counts, shape (N,).
    """
    spec = get_strategy(strategy)
    unknown = sorted(set(settings) - set(spec.defaults))
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(f"strategy {spec.name!r} has no setting {unknown[0]!r}; its settings: {valid}")
    margins, budget = _as_margins(margins), _as_budget(budget)
    if available is None:
        return spec.fn(margins, budget, rng, **settings)
    mask = np.asarray(available)
    if mask.dtype != np.bool_ or mask.shape != margins.shape:
        raise ValueError(
            f"available must be a bool mask of shape {margins.shape} (one per pair), "
            f"got dtype {mask.dtype}, shape {mask.shape}"
        )
    if spec.augments and budget and not mask.any():
        raise ValueError(f"available: no pair has variants, so budget {budget} cannot be placed")
    counts = np.zeros(margins.shape, dtype=np.int64)
    counts[mask] = spec.fn(margins[mask], budget, rng, **settings)
    return counts


# ---------------------------------------------------------------------------------------------------
# Sampling: counts -> (pair, variant) indices


def pool_offsets(pool_sizes) -> np.ndarray:
    """Start of each pair's variants in a flat, pair-major pool: pair i owns [off[i], off[i] + size[i])."""
    return _exclusive_cumsum(_as_counts("pool_sizes", pool_sizes))


def sample_variants(counts, pool_sizes, rng, *, variant_margins=None, order: str = "random"):
    """Draw ``counts[i]`` variants from pair i's pool of ``pool_sizes[i]``; returns (pair_index, variant_index).

    Both returned arrays are int64 of length sum(counts), grouped by pair in increasing order;
    variant_index is local to its pair (0 .. pool_sizes[i] - 1; add ``pool_offsets(pool_sizes)[pair]``
    for a flat pool index). A count up to the pool size is drawn without replacement; a larger one
    takes the whole pool once per full multiple and then the remainder without replacement, so each
    variant appears count // size or count // size + 1 times.
    order: "random" draws the remainder with ``rng``; "highest-margin" (West-of-N) takes the variants
        with the largest ``variant_margins`` first, ties to the lower index. ``variant_margins`` is
        either a list of N per-pair arrays or one flat pair-major array of length sum(pool_sizes)
        (pair i's variants from ``pool_offsets(pool_sizes)[i]`` on).
    A pair with count > 0 and an empty pool is an error (allocate with ``available=pool_sizes > 0``).
    """
    counts = _as_counts("counts", counts)
    pool_sizes = _as_counts("pool_sizes", pool_sizes)
    if counts.shape != pool_sizes.shape:
        raise ValueError(f"counts has shape {counts.shape} but pool_sizes has {pool_sizes.shape}")
    empty = np.flatnonzero((pool_sizes == 0) & (counts > 0))
    if empty.size:
        i = int(empty[0])
        raise ValueError(
            f"pair {i} has count {counts[i]} but no variants (pool size 0); "
            "allocate with available=pool_sizes > 0"
        )
    if order not in SAMPLING_ORDERS:
        raise ValueError(f"order must be one of {', '.join(SAMPLING_ORDERS)}; got {order!r}")
    if order == "highest-margin":
        flat_margins = _flat_variant_margins(variant_margins, pool_sizes)
    elif variant_margins is not None:
        raise ValueError("variant_margins is only used with order='highest-margin'")

    n = counts.size
    pair_ids = np.arange(n)
    starts = _exclusive_cumsum(counts)  # where each pair's draws begin in the output
    pair_index = np.repeat(pair_ids, counts)
    variant_index = np.empty(pair_index.size, dtype=np.int64)

    # Whole passes over the pool: variants 0..size-1, `full` times over.
    size = np.maximum(pool_sizes, 1)
    full, rem = np.divmod(counts, size)
    block = full * pool_sizes
    if block.any():
        offset = np.arange(block.sum()) - np.repeat(_exclusive_cumsum(block), block)
        variant_index[np.repeat(starts, block) + offset] = offset % np.repeat(pool_sizes, block)

    # The remainder, without replacement: rank each pool by its key (random, or -margin) and take the
    # first `rem`. Pools are padded to a power-of-two width so that one argsort per width ranks all
    # of them at once: a handful of widths, never a loop over pairs.
    rows = np.flatnonzero(rem)
    if rows.size:
        gen = _as_rng(rng)
        widths = 1 << np.ceil(np.log2(pool_sizes[rows])).astype(np.int64)
        first = starts + block  # where each pair's remainder begins
        offsets = _exclusive_cumsum(pool_sizes) if order == "highest-margin" else None
        for width in np.unique(widths):
            r = rows[widths == width]
            cols = np.arange(width)
            valid = cols < pool_sizes[r, None]
            if order == "random":
                keys = np.where(valid, gen.random((r.size, width)), np.inf)
                ranked = np.argsort(keys, axis=1)
            else:
                flat = offsets[r, None] + np.minimum(cols, pool_sizes[r, None] - 1)
                keys = np.where(valid, -flat_margins[flat], np.inf)
                ranked = np.argsort(keys, axis=1, kind="stable")
            take = cols < rem[r, None]
            variant_index[(first[r, None] + cols)[take]] = ranked[take]
    return pair_index, variant_index


def strategy_settings(strategy: str, *, tau: float | None = None, tau_scale: str = "raw", beta: float = 1.0) -> dict:
    """The keywords `allocate(strategy, …)` takes from these settings: those the strategy reads, τ only when
    given (else the strategy's default)."""
    defaults = get_strategy(strategy).defaults
    settings = {"tau": tau} if "tau" in defaults and tau is not None else {}
    if "tau_scale" in defaults:
        settings["tau_scale"] = tau_scale
    if "beta" in defaults:
        settings["beta"] = beta
    return settings


# ---------------------------------------------------------------------------------------------------
# Per-round summaries of an allocation


def allocation_statistics(margins, counts) -> dict:
    """What every round logs of its allocation: entropy, effective sample size and the lowest-decile budget
    shares (by |Δ| and by signed Δ)."""
    return {"allocation_entropy": allocation_entropy(counts), "effective_sample_size": effective_sample_size(counts),
            "lowest_decile_budget_share": lowest_margin_decile_share(margins, counts),
            "lowest_signed_decile_budget_share": lowest_margin_decile_share(margins, counts, signed=True)}


def allocation_entropy(counts) -> float:
    """Shannon entropy (nats) of counts / sum(counts); log N for uniform, 0 for one pair or a 0 budget."""
    counts = _as_counts("counts", counts)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def effective_sample_size(counts) -> float:
    """(Σc)² / Σc²: the number of equally used pairs the allocation is worth; 0.0 for a 0 budget."""
    counts = _as_counts("counts", counts).astype(np.float64)
    squares = (counts * counts).sum()
    return float(counts.sum() ** 2 / squares) if squares else 0.0


def lowest_margin_decile_share(margins, counts, *, signed: bool = False) -> float:
    """Share of the budget given to the ceil(N/10) pairs with the smallest |Δ| (or, with ``signed``, the smallest
    signed Δ: the most mis-ranked pairs, which `mars_signed` favours); 0.0 for a 0 budget.

    Ties at the decile's edge go to the lower index (a stable sort), so the decile always holds exactly
    ceil(N/10) pairs. Uniform allocation gives about 0.1; MARS gives more.
    """
    margins = _as_margins(margins)
    counts = _as_counts("counts", counts)
    if counts.shape != margins.shape:
        raise ValueError(f"counts has shape {counts.shape} but margins has {margins.shape}")
    total = counts.sum()
    if total == 0:
        return 0.0
    key = margins if signed else np.abs(margins)
    decile = np.argsort(key, kind="stable")[: -(-margins.size // 10)]
    return float(counts[decile].sum() / total)


# ---------------------------------------------------------------------------------------------------
# Validation and small helpers


def _softmax_weights(logits: np.ndarray) -> np.ndarray:
    """Unnormalised softmax, max logit shifted to 0 so nothing overflows and the largest weight is 1."""
    if logits.size == 0:
        return logits
    return np.exp(logits - logits.max())


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, dtype=np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


def _as_rng(rng) -> np.random.Generator:
    """A Generator as is, a seed -> a new Generator, None -> fresh OS entropy."""
    return np.random.default_rng(rng)


def _as_margins(margins) -> np.ndarray:
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"margins must be 1-D (one per base pair), got shape {m.shape}")
    bad = np.flatnonzero(~np.isfinite(m))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"margins must be finite; margins[{i}] = {m[i]} (check the model's scores)")
    return m


def _as_budget(budget) -> int:
    try:
        if isinstance(budget, bool):
            raise TypeError
        value = operator.index(budget)
    except TypeError:
        if isinstance(budget, (float, np.floating)) and float(budget).is_integer():
            value = int(budget)
        else:
            raise ValueError(f"budget must be a whole number >= 0, got {budget!r}") from None
    if value < 0:
        raise ValueError(f"budget must be >= 0, got {value}")
    return value


def _as_setting(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _as_counts(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one per base pair), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.size and not (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.floor(a))):
            raise ValueError(f"{name} must hold whole numbers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    neg = np.flatnonzero(a < 0)
    if neg.size:
        i = int(neg[0])
        raise ValueError(f"{name} must be >= 0; {name}[{i}] = {a[i]}")
    return a


def _flat_variant_margins(variant_margins, pool_sizes: np.ndarray) -> np.ndarray:
    """Per-pair arrays or a flat array -> one flat, pair-major, finite float64 array."""
    if variant_margins is None:
        raise ValueError("order='highest-margin' needs variant_margins (the model's margin on each variant)")
    # A list of per-pair arrays, unless it is a plain list of numbers (then it is the flat form).
    if isinstance(variant_margins, (list, tuple)) and any(np.ndim(m) > 0 for m in variant_margins):
        if len(variant_margins) != pool_sizes.size:
            raise ValueError(
                f"variant_margins has {len(variant_margins)} per-pair arrays, expected {pool_sizes.size}"
            )
        parts = [np.asarray(m, dtype=np.float64).ravel() for m in variant_margins]
        lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts))
        wrong = np.flatnonzero(lengths != pool_sizes)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(f"variant_margins[{i}] has {lengths[i]} margins but pair {i}'s pool has {pool_sizes[i]}")
        flat = np.concatenate(parts) if parts else np.zeros(0)
    else:
        flat = np.asarray(variant_margins, dtype=np.float64)
        if flat.ndim != 1 or flat.size != pool_sizes.sum():
            raise ValueError(
                f"flat variant_margins must be 1-D of length sum(pool_sizes) = {pool_sizes.sum()}, "
                f"got shape {flat.shape}"
            )
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        pair = int(np.searchsorted(np.cumsum(pool_sizes), bad[0], side="right"))
        raise ValueError(f"variant_margins of pair {pair} must be finite, got {flat[bad[0]]}")
    return flat
