"""Preference pairs: formats in, validated `PreferencePair` records out.

(Skeleton: the types below are the stable interface; loaders are filled in next.)
"""
from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """A user's data problem, reported in one line: 'FILE:LINE: field 'X': what is wrong; how to fix it'."""


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: `chosen` is preferred over `rejected` as a reply to `prompt`.

    prompt: the conversation so far as chat messages [{"role": "user"|"assistant"|"system", "content": str}],
            ending with the user turn being answered.
    id: stable identifier, "<source>:<line-or-row>" (1-based), kept by every derived variant.
    margin: optional per-pair preference strength (TRL's `margin` column).
    subset: optional subset name (RewardBench-style `subset` column, or the named source's subset).
    """

    id: str
    prompt: tuple  # tuple of {"role", "content"} dicts; a tuple so the record stays immutable
    chosen: str
    rejected: str
    margin: float | None = None
    subset: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def to_hh_text(prompt, response: str | None = None) -> str:
    """Render messages (and optionally the response) in the HH-RLHF transcript format."""
    parts = []
    for message in prompt:
        role = message["role"]
        speaker = "Assistant" if role == "assistant" else "Human"
        if role == "system":
            parts.append(f"\n\nSystem: {message['content']}")
        else:
            parts.append(f"\n\n{speaker}: {message['content']}")
    if response is not None:
        parts.append(f"\n\nAssistant: {response}")
    return "".join(parts)
