"""Label flips: how often a variant's inherited label disagrees with an independent judge (issue: arm (b) on real data).

A variant inherits its source pair's label ("chosen stays chosen"). Whether that is right cannot be seen without
a judge; with one (a reward model not trained on the augmented pairs), a variant counts as *flipped* when the
sign of the judge's margin on the variant differs from the sign of its margin on the source pair, so the
judge's own mistakes on the source do not count. This module turns those signs, the trained model's margins
per round and each strategy's sampled variants into two tables:

- the flip rate by decile of the source pair's margin under the model being trained (|Δ| or signed Δ);
- the flip rate of the variants each strategy actually trained on, weighted by its budget.

Everything here is pure numpy on arrays; `bench/label_flips.py` scores the pool with a judge and feeds it.
"""
from __future__ import annotations

import numpy as np


def flipped(judge_source: np.ndarray, judge_variants: np.ndarray, pool_sizes: np.ndarray) -> np.ndarray:
    """Per variant (flat, pair-major), True where the judge's margin sign differs from its sign on the source.

    judge_source: (N,) judge margins on the base pairs; judge_variants: (Σ sizes,) on the variants;
    pool_sizes: (N,) variants per base pair. A judge margin of exactly 0 has no sign: such a variant (or a
    variant of such a source) counts as flipped only when the other side is non-zero.
    """
    judge_source, judge_variants = np.asarray(judge_source, float), np.asarray(judge_variants, float)
    pool_sizes = np.asarray(pool_sizes, dtype=np.int64)
    if judge_source.shape != pool_sizes.shape or judge_variants.size != pool_sizes.sum():
        raise ValueError(f"shapes disagree: {judge_source.shape} sources, {pool_sizes.shape} pool sizes summing "
                         f"to {pool_sizes.sum()}, {judge_variants.shape} variants")
    return np.sign(judge_variants) != np.repeat(np.sign(judge_source), pool_sizes)


def pair_flip_rates(flips: np.ndarray, pool_sizes: np.ndarray) -> np.ndarray:
    """(N,) share of each base pair's variants that flipped; NaN for a pair without variants."""
    pool_sizes = np.asarray(pool_sizes, dtype=np.int64)
    sums = np.bincount(np.repeat(np.arange(pool_sizes.size), pool_sizes), weights=flips.astype(float),
                       minlength=pool_sizes.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pool_sizes > 0, sums / np.maximum(pool_sizes, 1), np.nan)


def by_decile(margins: np.ndarray, flips: np.ndarray, pool_sizes: np.ndarray, *, signed: bool = False) -> list[dict]:
    """Flip rate of the variants of each decile of base pairs, ranked by |Δ| (or signed Δ), lowest first.

    margins: (N,) the trained model's margins on the base pairs. Returns ten {"decile", "pairs", "variants",
    "flip_rate", "margin_low", "margin_high"} (deciles by rank, ties to the lower index).
    """
    margins = np.asarray(margins, float)
    key = margins if signed else np.abs(margins)
    order = np.argsort(key, kind="stable")
    sizes = np.asarray(pool_sizes, dtype=np.int64)
    per_pair = np.bincount(np.repeat(np.arange(sizes.size), sizes), weights=flips.astype(float), minlength=sizes.size)
    rows = []
    for decile, members in enumerate(np.array_split(order, 10), start=1):
        variants = int(sizes[members].sum())
        rows.append({"decile": decile, "pairs": int(members.size), "variants": variants,
                     "flip_rate": float(per_pair[members].sum() / variants) if variants else None,
                     "margin_low": float(key[members].min()) if members.size else None,
                     "margin_high": float(key[members].max()) if members.size else None})
    return rows


def sampled_flip_rate(flips: np.ndarray, pool_sizes: np.ndarray, pair_index: np.ndarray,
                      variant_index: np.ndarray) -> float | None:
    """Share of flipped variants among those a round sampled (a variant drawn twice counts twice)."""
    if len(pair_index) == 0:
        return None
    offsets = np.concatenate([[0], np.cumsum(np.asarray(pool_sizes, dtype=np.int64))[:-1]])
    return float(flips[offsets[np.asarray(pair_index)] + np.asarray(variant_index)].mean())
