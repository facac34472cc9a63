"""The paraphraser interface every backend implements, and what the backends share.

`paraphrase(texts, n, seed) -> list[list[str]]`: n rewrites of each text, batched. Each text's outputs are
seeded from (seed, text, output index) — never from the batch it happens to sit in — so a text gets the
same paraphrases however the texts are grouped, wherever the backend allows it (see docs/POOL.md).
`complete(tasks)`: one output per `Task` — a paraphrase, or a refinement rewrite that moves a response away
from the pair's other one (LLM backends only; see refine.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from marsrm.config import ConfigError

BACKENDS = ("local", "openai", "lexical")
TEMPLATES = ("auto", "chat", "t5", "plain")  # the local backend's prompt formats
DECODINGS = ("sample", "beam")


class PoolError(ConfigError):
    """A paraphraser or pool that cannot run as asked; the message names the setting or file and the fix."""


class BuildStopped(PoolError):
    """A build stopped part-way (a backend kept failing); everything finished so far is on disk."""


@dataclass(frozen=True)
class Task:
    """One generation request: rewrite `text` once, seeded by `seed`.

    kind: "paraphrase", or "rewrite-rejected" / "rewrite-chosen" (refinement: move `text` away from
    `other`, the pair's other response, without improving a rejected one).
    """

    text: str
    seed: int
    kind: str = "paraphrase"
    other: str = ""


# Instructions are part of a backend's identity: changing one changes every cache key.
SYSTEM = "You rewrite text in other words. You never answer, explain or comment on the text."
INSTRUCTIONS = {
    "paraphrase": ("Paraphrase the text below in different words. Keep its meaning, tone, length and any mistakes; "
                   "do not answer it, add to it, or improve it. Reply with the paraphrase only.\n\nText: {text}"),
    "rewrite-rejected": ("Two replies to the same message follow. Rewrite reply B so that it differs more from reply "
                         "A in content and wording. Do NOT make reply B better, more helpful or more correct. "
                         "Reply with the new reply B only.\n\nReply A: {other}\n\nReply B: {text}"),
    "rewrite-chosen": ("Two replies to the same message follow. Rewrite reply A so that it differs more from reply B "
                       "in content and wording, while staying exactly as helpful and correct. Reply with the new "
                       "reply A only.\n\nReply A: {text}\n\nReply B: {other}"),
}

# Worked examples shown before a paraphrase request (chat models): small models copy the format they see,
# and without them SmolLM2-135M tends to comment on the text instead of rewriting it.
EXAMPLES = (
    ("I think the main reason is that the store closes early on Sundays, so you might want to go on Saturday instead.",
     "The store shuts early on Sundays, which is probably why; going on Saturday may work better."),
    ("I don't know.", "I'm not sure."),
    ("Do you want the recipe for the sauce as well?", "Would you like the sauce recipe too?"),
    ("You should water the plant once a week and keep it out of direct sunlight.",
     "Give the plant water every week, and keep it away from direct sun."),
)


def chat_messages(task: Task) -> list[dict]:
    """The chat request for a task: system line, worked examples (paraphrase tasks), then the request."""
    messages = [{"role": "system", "content": SYSTEM}]
    if task.kind == "paraphrase":
        for source, rewrite in EXAMPLES:
            messages += [{"role": "user", "content": INSTRUCTIONS["paraphrase"].format(text=source, other="")},
                         {"role": "assistant", "content": rewrite}]
    messages.append({"role": "user", "content": INSTRUCTIONS[task.kind].format(text=task.text, other=task.other)})
    return messages


# Small models like to announce their answer ("Here's a paraphrase: …"); that line is not the paraphrase.
_PREAMBLE = re.compile(r"^\s*(?:sure[!,.]?\s*)?(?:here(?:'s| is| are)\b[^\n]*?:|(?:the )?(?:paraphrased?|rewritten|"
                       r"new|revised)\s*(?:text|version|reply(?: [ab])?|response)?\s*:)\s*", re.IGNORECASE)
_QUOTES = {('"', '"'), ("“", "”"), ("'", "'")}


def stable_hash(*parts) -> str:
    """Hex SHA-256 of the JSON of `parts` (used for cache keys and seeds)."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the user's seed and a text (and an output index): independent of batch composition."""
    return int(stable_hash(int(seed), *parts)[:15], 16)


def clean_output(text: str, source: str = "") -> str:
    """Strip what a chat model wraps around a paraphrase: an announcing first phrase ("Here's the text:"),
    surrounding quotes — unless the source itself starts or is wrapped that way."""
    text = text.strip()
    if not _PREAMBLE.match(source):
        stripped = _PREAMBLE.sub("", text, count=1).strip()
        text = stripped or text
    source = source.strip()
    if len(text) >= 2 and (text[0], text[-1]) in _QUOTES and (source[:1], source[-1:]) not in _QUOTES:
        text = text[1:-1].strip()
    return text


def word_count(text: str) -> int:
    return len(text.split())


def token_budget(text: str, ratio: float, cap: int, floor: int = 16) -> int:
    """max_new_tokens for a rewrite of `text`: `ratio` × its length (≈1.4 tokens a word) + slack, at most `cap`."""
    return int(min(cap, max(floor, math.ceil(ratio * 1.4 * word_count(text)) + 8)))


_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")


def split_segments(text: str, max_words: int) -> list[tuple[str, str]]:
    """Cut `text` into sentence-aligned chunks of at most ~`max_words` words: [(chunk, separator after it)].

    Joining chunk + separator over the list gives back `text` exactly. `max_words` ≤ 0 disables chunking.
    A single sentence longer than `max_words` stays whole.
    """
    if max_words <= 0 or word_count(text) <= max_words:
        return [(text, "")]
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append((text[start:match.start()], match.group(0)))
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], ""))
    chunks: list[tuple[str, str]] = []
    words = 0
    for sentence, sep in pieces:
        count = word_count(sentence)
        if chunks and words + count <= max_words:
            prev, prev_sep = chunks[-1]
            chunks[-1] = (prev + prev_sep + sentence, sep)
            words += count
        else:
            chunks.append((sentence, sep))
            words = count
    return chunks


def join_segments(parts: list[str], separators: list[str]) -> str:
    return "".join(p + s for p, s in zip(parts, separators, strict=True)).strip()


class Paraphraser:
    """Base class: subclasses set `kind`, implement `settings()` and `complete()` (or override `paraphrase`)."""

    kind = "base"
    can_rewrite = True
    batch_invariant = True  # a text's outputs never depend on the other texts of the call

    def __init__(self):
        self.tokens = 0  # generated tokens so far (the progress bar's tokens/s)

    def settings(self) -> dict:
        """Everything that determines the outputs (model identity, decoding, prompts): the cache key."""
        raise NotImplementedError

    def check(self) -> None:
        """Fail with a clear `PoolError` before any work if the backend cannot run (missing file, dead endpoint)."""

    def complete(self, tasks: list[Task], on_done=None) -> list[str]:
        """One output per task; `on_done(index, text)` is called as each finishes (for resumable builds)."""
        raise NotImplementedError

    def paraphrase(self, texts: list[str], n: int, seed: int, on_done=None) -> list[list[str]]:
        """n paraphrases per text; `on_done(index, outputs)` is called once a text's n outputs are complete."""
        if n < 1:
            raise PoolError(f"setting 'n': must be at least 1 (got {n})")
        tasks = [Task(text, derive_seed(seed, text, k)) for text in texts for k in range(n)]
        out: list[list[str | None]] = [[None] * n for _ in texts]
        missing = [n] * len(texts)

        def done(index, text):
            row, k = divmod(index, n)
            out[row][k] = text
            missing[row] -= 1
            if missing[row] == 0 and on_done is not None:
                on_done(row, list(out[row]))

        self.complete(tasks, on_done=done)
        return [list(row) for row in out]

    def close(self) -> None:
        """Release whatever the backend holds (threads, models)."""
