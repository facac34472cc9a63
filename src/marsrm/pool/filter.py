"""The label-preservation filter: drop paraphrases that may no longer mean what their source meant.

A variant inherits its source pair's label; a paraphrase that changed the meaning would carry a wrong one.
Each paraphrase gets a verdict: None (kept) or the first reason that fails, in this order:
  empty      no text (or only punctuation)
  identical  the source again (compared case- and whitespace-insensitively)
  refusal    a refusal or meta-comment ("I'm sorry, I can't …") where the source was none
  length     word count outside [min_length_ratio, max_length_ratio] × the source's
  cosine     embedding cosine to the source below min_cosine
Dropped paraphrases stay in the pool files with their reason; only kept ones make variants.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from marsrm.pool.paraphrase import PoolError

REASONS = ("empty", "identical", "refusal", "length", "cosine")

_REFUSAL = re.compile(r"^\s*(?:i'?m sorry|i am sorry|sorry,? (?:but )?i|i can(?:no|')t|i cannot|"
                      r"i'm (?:not able|unable)|as an ai|i apologi[sz]e|i (?:do not|don't) feel comfortable)"
                      r"|\b(?:paraphrase|rephrase|rewrite)[sd]?\b.{0,40}\b(?:text|sentence|passage)\b",
                      re.IGNORECASE)


@dataclass
class FilterSettings:
    """Thresholds of the label-preservation filter (each in [0, 1] except the ratio band's upper end)."""

    min_cosine: float = 0.75
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0

    def validate(self) -> None:
        for name in ("min_cosine", "min_length_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PoolError(f"setting '{name}': must be in [0, 1] (got {value})")
        if self.max_length_ratio < max(1.0, self.min_length_ratio):
            raise PoolError(f"setting 'max_length_ratio': must be ≥ 1 (got {self.max_length_ratio})")

    def to_dict(self) -> dict:
        return asdict(self)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def cheap_verdict(source: str, paraphrase: str, settings: FilterSettings) -> str | None:
    """Every check but the cosine: the reason `paraphrase` fails, or None if it may still be kept."""
    if not re.search(r"\w", paraphrase):
        return "empty"
    if _normal(paraphrase) == _normal(source):
        return "identical"
    if _REFUSAL.search(paraphrase) and not _REFUSAL.search(source):
        return "refusal"
    ratio = _words(paraphrase) / max(1, _words(source))
    if not settings.min_length_ratio <= ratio <= settings.max_length_ratio:
        return "length"
    return None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (m, d) arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def judge(sources: list[str], paraphrases: list[list[str]], settings: FilterSettings, embed=None):
    """Verdicts for each source's paraphrases: (reasons, cosines), both shaped like `paraphrases`.

    reasons[i][k] is None (kept) or a name from REASONS; cosines[i][k] is the cosine to the source, or None
    where a cheap check already failed (the embedding is then not computed). `embed(texts) -> (m, d)`
    is needed only when settings.min_cosine > 0.
    """
    reasons = [[cheap_verdict(s, p, settings) for p in ps] for s, ps in zip(sources, paraphrases, strict=True)]
    cosines: list[list[float | None]] = [[None] * len(ps) for ps in paraphrases]
    todo = [(i, k) for i, row in enumerate(reasons) for k, r in enumerate(row) if r is None]
    if todo and embed is not None:
        src = embed([sources[i] for i, _ in todo])
        par = embed([paraphrases[i][k] for i, k in todo])
        for (i, k), value in zip(todo, cosine_rows(src, par), strict=True):
            cosines[i][k] = round(float(value), 4)
            if value < settings.min_cosine:
                reasons[i][k] = "cosine"
    elif todo and settings.min_cosine > 0:
        raise PoolError("label filter: min_cosine > 0 needs an embedding model (or set min_cosine to 0)")
    return reasons, cosines


def count_reasons(reasons) -> dict:
    """{"kept": …, "empty": …, …} over any nesting of verdict lists."""
    counts = {"kept": 0, **{r: 0 for r in REASONS}}

    def walk(x):
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            counts["kept" if x is None else x] += 1

    walk(reasons)
    return counts
