"""`split_pairs`: the seeded train/val/eval split, the same on every machine."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from marsrm.data.errors import DataError
from marsrm.data.formats import PreferencePair


@dataclass
class Split:
    """A seeded split of pairs: `train` to fit on, `val` carved from it, `eval` held out."""

    train: list[PreferencePair]
    val: list[PreferencePair]
    eval: list[PreferencePair]


def _count(setting: str, value, total: int) -> int | None:
    """A size as a count: an int as is, a float in (0, 1) as that fraction of `total` (rounded down)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{setting}={value!r}: expected a number of pairs or a fraction in (0, 1)")
    if isinstance(value, float):
        if not 0 < value < 1:
            raise DataError(f"{setting}={value!r}: a fraction must lie strictly between 0 and 1; "
                            "give a whole number of pairs otherwise")
        return math.floor(value * total)
    if value < 0:
        raise DataError(f"{setting}={value}: cannot be negative")
    return value


def split_pairs(pairs: Iterable[PreferencePair], *, train_size: int | float | None = None,
                eval_size: int | float | None = None, val_size: int | float = 0, seed: int = 0) -> Split:
    """Split pairs into train, val and eval, the same way on every machine.

    The pairs are sorted by id (so input order does not matter), then shuffled with
    `numpy.random.default_rng(seed).permutation`. train is the first `train_size`, eval the next
    `eval_size` (default: all the rest); `val_size` pairs are then taken out of the end of train.
    train_size defaults to everything eval_size leaves. Sizes are counts, or floats in (0, 1) as fractions
    (of all pairs for train and eval, of the train pairs for val), rounded down. Raises DataError for a
    negative size, sizes that add up to more pairs than there are, or repeated ids.
    """
    import numpy as np

    ordered = sorted(pairs, key=lambda pair: pair.id)
    for before, after in zip(ordered, ordered[1:]):
        if before.id == after.id:
            raise DataError(f"pair id {before.id!r} occurs twice; ids must be unique to split deterministically")
    total = len(ordered)
    n_train, n_eval = _count("train_size", train_size, total), _count("eval_size", eval_size, total)
    if n_eval is not None and n_eval > total:
        raise DataError(f"eval_size={eval_size} asks for {n_eval} pairs but only {total} are available")
    if n_train is None:
        n_train = total - (n_eval or 0)
    if n_eval is None:
        n_eval = max(total - n_train, 0)
    if n_train + n_eval > total:
        raise DataError(f"train_size + eval_size = {n_train} + {n_eval} = {n_train + n_eval} pairs, but only "
                        f"{total} are available; lower train_size or eval_size")
    n_val = _count("val_size", val_size, n_train)
    if n_val > n_train:
        raise DataError(f"val_size={val_size} asks for {n_val} pairs but train has only {n_train}; "
                        "lower val_size or raise train_size")
    order = np.random.default_rng(seed).permutation(total)
    shuffled = [ordered[i] for i in order]
    train = shuffled[:n_train]
    return Split(train=train[: n_train - n_val], val=train[n_train - n_val:],
                 eval=shuffled[n_train: n_train + n_eval])
