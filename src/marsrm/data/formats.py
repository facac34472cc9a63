"""Formats: records as validated `PreferencePair`s (TRL pairs, HH transcripts, chat messages, PKU), and back.

A converter per format turns one record into (prompt messages, chosen, rejected, whether the dialogues
differ); `_detect_format` picks the format from the first record's fields; `_Record` names the file, the line
and the field in every error. `hh_turns` is the one HH transcript parser (rl.py reads TRL prompts with it);
`to_hh_text`, `pairs_to_records` and `save_pairs_jsonl` write pairs back out. docs/DATA.md lists the formats.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from marsrm.data.errors import DataError, _choice, _names, _short, _type_name
from marsrm.io import atomic_write


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
    """Render messages (and optionally the response) in the HH-RLHF transcript format.

    Each message becomes "\\n\\nHuman: {content}" (user), "\\n\\nAssistant: {content}" (assistant) or
    "\\n\\nSystem: {content}" (system); `response`, when given, is appended as a final Assistant turn.
    The single space after each "Speaker:" belongs to the format: `load_pairs` strips exactly that space,
    so messages whose text holds no "\\n\\nHuman:"/"\\n\\nAssistant:" markers survive a round trip.
    """
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


FORMATS = ("pairs", "hh", "implicit", "chat", "pku")
ROLES = ("user", "assistant", "system")

_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_SYSTEM = "\n\nSystem:"
_ANY_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_SPEAKERS = {"Human": "user", "Assistant": "assistant", "System": "system"}


def _drop_one_space(text: str) -> str:
    """The transcript format puts one space after "Speaker:"; it is not part of the text."""
    return text[1:] if text.startswith(" ") else text


def hh_turns(transcript: str, *, system_turns: bool = False) -> tuple[str, list[dict]]:
    """An HH transcript as (the text before its first turn, its turns as {"role", "content"} messages).

    Each "\\n\\nHuman:" (user) or "\\n\\nAssistant:" (assistant) starts a turn; with `system_turns`, so does each
    "\\n\\nSystem:" (system), which otherwise stays in the text before the first turn or in the turn it
    follows. A transcript written without the leading blank line reads as if it had one; the one space after
    each "Speaker:" belongs to the format and is dropped.
    """
    text = transcript
    if text.lstrip("\n").startswith(("Human:", "Assistant:", "System:")):
        text = "\n\n" + text.lstrip("\n")  # tolerate a transcript written without the leading blank line
    parts = (_ANY_TURN if system_turns else _TURN).split(text)
    return parts[0], [{"role": _SPEAKERS[speaker], "content": _drop_one_space(content)}
                      for speaker, content in zip(parts[1::2], parts[2::2])]


@dataclass(frozen=True)
class _Fields:
    """Column names for one load, and the flag that maps each (for the fix in an error message)."""

    prompt: str
    chosen: str
    rejected: str
    margin: str
    subset: str
    margin_required: bool
    subset_required: bool
    id: str | None
    mapped: tuple[tuple[str, str], ...] = ()  # (setting, column) for each *_field the caller gave

    def flag(self, column: str) -> str:
        for name in ("prompt", "chosen", "rejected", "margin", "subset"):
            if getattr(self, name) == column:
                return f"{name}_field="
        return "the *_field settings"

    def needs(self, fmt: str, preference: str) -> str:
        """The fields a record of format `fmt` must have, for 'missing field' messages."""
        if fmt == "pku":
            return f"'{self.prompt}', 'response_0', 'response_1' and '{preference}_response_id'"
        if fmt == "hh":
            return f"whole HH transcripts in '{self.chosen}' and '{self.rejected}'"
        if fmt == "implicit":
            return f"'{self.chosen}' and '{self.rejected}' strings that begin with the same prompt"
        if fmt == "chat":
            return f"'{self.chosen}' and '{self.rejected}' message lists"
        return f"'{self.prompt}', '{self.chosen}' and '{self.rejected}'"


class _Record:
    """One input record with its location, so every check can name the file, the line and the field."""

    def __init__(self, record: dict, location: str, fmt: str, fields: _Fields, preference: str):
        self.record, self.location, self.fmt = record, location, fmt
        self.fields, self.preference = fields, preference

    def fail(self, field_name: str, problem: str, fix: str) -> DataError:
        return DataError(f"{self.location}: field {field_name!r} {problem}; {fix}")

    def value(self, field_name: str):
        if field_name not in self.record:
            raise self.fail(field_name, f"is missing (the record has: {_names(self.record)})",
                            f"{self.fmt} format needs {self.fields.needs(self.fmt, self.preference)}; "
                            f"map another column to it with {self.fields.flag(field_name)}")
        return self.record[field_name]

    def text(self, field_name: str) -> str:
        value = self.value(field_name)
        if not isinstance(value, str):
            raise self.fail(field_name, f"is {_type_name(value)}, expected a string",
                            "write the text as a JSON string")
        return self.encodable(field_name, value)

    def encodable(self, field_name: str, text: str, part: str = "") -> str:
        """`text` itself, or DataError when it holds a lone surrogate ("\\ud800", which JSON allows): that is not
        text, so no tokenizer encodes it and no UTF-8 file holds it."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise self.fail(field_name, f"{part}holds a lone surrogate {_short(text[error.start])} at character "
                            f"{error.start + 1}, half of a UTF-16 pair and not text",
                            "write the whole character (the pair \\ud83d\\ude00 is one emoji) or remove it") from None
        return text

    def messages(self, field_name: str, value) -> list[dict]:
        if not isinstance(value, list):
            raise self.fail(field_name, f"is {_type_name(value)}, expected a list of {{role, content}} messages",
                            "write the conversation as a list of messages")
        messages = []
        for number, message in enumerate(value, 1):
            if not isinstance(message, dict):
                raise self.fail(field_name, f"message {number} is {_type_name(message)}, expected an object",
                                'write each message as {"role": ..., "content": ...}')
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise self.fail(field_name, f"message {number} has role {_short(role)}",
                                f"use one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise self.fail(field_name, f"message {number} has content that is {_type_name(content)}, "
                                "expected a string", "write the content as a string")
            self.encodable(field_name, content, f"message {number} ")
            messages.append({"role": role, "content": content})
        return messages


def _hh_messages(transcript: str, rec: _Record, field_name: str) -> list[dict]:
    """Parse a transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into messages; Human -> user."""
    head, turns = hh_turns(transcript)
    messages = []
    if head.startswith(_SYSTEM):
        messages.append({"role": "system", "content": _drop_one_space(head[len(_SYSTEM):])})
    elif head:
        raise rec.fail(field_name, f"does not start with a Human turn (it starts {head[:30]!r})",
                       'an HH transcript starts with "\\n\\nHuman:"')
    messages.extend(turns)
    if not messages:
        raise rec.fail(field_name, "has no Human turn before its final Assistant turn",
                       "a pair needs a prompt to answer")
    return messages


def _split_transcript(rec: _Record, field_name: str) -> tuple[str, str]:
    """(dialogue before the LAST "\\n\\nAssistant:", final response without its format space)."""
    transcript = rec.text(field_name)
    cut = transcript.rfind(_ASSISTANT)
    if cut < 0:
        raise rec.fail(field_name, 'has no "\\n\\nAssistant:" turn',
                       "hh format needs whole transcripts that end with the Assistant's response")
    return transcript[:cut], _drop_one_space(transcript[cut + len(_ASSISTANT):])


def _looks_like_hh(text: str) -> bool:
    start = text.lstrip("\n")
    return start.startswith("Human:") or (start.startswith("System:") and "\n\nHuman:" in start)


def _prompt_from_string(rec: _Record, field_name: str, prompt: str) -> tuple[list[dict], bool]:
    """A prompt string as messages, and whether it ended with an open "\\n\\nAssistant:" turn.

    An HH-looking prompt is parsed into its turns; any other string is one user message, unaltered.
    """
    rec.encodable(field_name, prompt)
    if not _looks_like_hh(prompt):
        return [{"role": "user", "content": prompt}], False
    open_turn = prompt.endswith(_ASSISTANT)
    if open_turn or prompt.endswith(_ASSISTANT + " "):
        prompt = prompt[: prompt.rfind(_ASSISTANT)]
    return _hh_messages(prompt, rec, field_name), open_turn


# Each converter turns one record into (prompt messages, chosen, rejected, whether the dialogues differ).

def _from_pairs(rec: _Record):
    fields = rec.fields
    prompt = rec.value(fields.prompt)
    chosen, rejected = rec.text(fields.chosen), rec.text(fields.rejected)
    if isinstance(prompt, list):
        if not prompt:
            raise rec.fail(fields.prompt, "is an empty list", "a pair needs a prompt to answer")
        return rec.messages(fields.prompt, prompt), chosen, rejected, False
    if not isinstance(prompt, str):
        raise rec.fail(fields.prompt, f"is {_type_name(prompt)}, expected a string or a list of messages",
                       "write the prompt as text or as chat messages")
    messages, open_turn = _prompt_from_string(rec, fields.prompt, prompt)
    if open_turn:  # "...\n\nAssistant:" + " response": the space is the transcript's, not the response's
        chosen, rejected = _drop_one_space(chosen), _drop_one_space(rejected)
    return messages, chosen, rejected, False


def _from_hh(rec: _Record):
    chosen_dialogue, chosen = _split_transcript(rec, rec.fields.chosen)
    rejected_dialogue, rejected = _split_transcript(rec, rec.fields.rejected)
    # keep-chosen: the prompt is the chosen transcript's; each response is its own transcript's last turn
    prompt = _hh_messages(chosen_dialogue, rec, rec.fields.chosen)
    return prompt, chosen, rejected, chosen_dialogue != rejected_dialogue


def trl_prompt_length(chosen: str, rejected: str) -> int:
    """Characters of the prompt that `chosen` and `rejected` share, by TRL's `extract_prompt`: up to the first
    character where they differ, less a space just before it (which stays with the responses)."""
    cut = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    return cut - 1 if cut > 0 and chosen[cut - 1] == " " else cut


def _from_implicit(rec: _Record):
    """TRL's implicit prompt with plain strings: the opening text chosen and rejected share is the prompt."""
    fields = rec.fields
    chosen, rejected = rec.text(fields.chosen), rec.text(fields.rejected)
    cut = trl_prompt_length(chosen, rejected)
    if cut == 0 or not chosen[:cut].strip():
        raise rec.fail(fields.chosen, f"shares no opening text with '{fields.rejected}', so there is no prompt",
                       f"give the prompt in a '{fields.prompt}' column (or prompt_field=), or write whole HH "
                       "transcripts")
    messages, _ = _prompt_from_string(rec, fields.chosen, chosen[:cut])
    # marsrm renders the prompt/response boundary itself (HH text or a chat template): the space TRL leaves on
    # the responses is the boundary's, not the response's
    return messages, _drop_one_space(chosen[cut:]), _drop_one_space(rejected[cut:]), False


def _from_chat(rec: _Record):
    fields = rec.fields
    responses, contexts = [], []
    for name in (fields.chosen, fields.rejected):
        messages = rec.messages(name, rec.value(name))
        if not messages or messages[-1]["role"] != "assistant":
            ends = f"ends with a {messages[-1]['role']} message" if messages else "is an empty list"
            raise rec.fail(name, ends, "the conversation must end with the assistant's response")
        responses.append(messages[-1]["content"])
        contexts.append(messages[:-1])
    explicit = rec.record.get(fields.prompt)
    if isinstance(explicit, list):  # TRL's explicit prompt: the conversation is prompt + completion
        prompt = rec.messages(fields.prompt, explicit) + contexts[0]
    elif contexts[0]:
        # Implicit prompt. A prompt string beside it (UltraFeedback) repeats the first user turn.
        prompt = contexts[0]
    elif isinstance(explicit, str):
        prompt, _ = _prompt_from_string(rec, fields.prompt, explicit)
    else:
        problem = "is missing" if fields.prompt not in rec.record else f"is {_type_name(explicit)}"
        raise rec.fail(fields.prompt, f"{problem} and '{fields.chosen}' holds only the response",
                       "give the prompt as messages, or put the conversation before the response in chosen/rejected")
    if not prompt:
        raise rec.fail(fields.prompt, "is an empty list", "a pair needs a prompt to answer")
    return prompt, responses[0], responses[1], contexts[0] != contexts[1]


def _from_pku(rec: _Record):
    prompt_text = rec.text(rec.fields.prompt)
    responses = (rec.text("response_0"), rec.text("response_1"))
    id_field = f"{rec.preference}_response_id"
    which = rec.value(id_field)
    if isinstance(which, str) and which.strip() in ("0", "1"):  # CSV copies hold every cell as text
        which = int(which)
    if isinstance(which, bool) or which not in (0, 1):
        raise rec.fail(id_field, f"is {_type_name(which)}, expected 0 or 1",
                       "it must name the preferred response: 0 or 1")
    which = int(which)  # 1.0 (a float column) names response 1 too
    prompt, _ = _prompt_from_string(rec, rec.fields.prompt, prompt_text)
    return prompt, responses[which], responses[1 - which], False


_CONVERTERS = {"pairs": _from_pairs, "hh": _from_hh, "implicit": _from_implicit, "chat": _from_chat,
               "pku": _from_pku}


def _detect_format(record: dict, fields: _Fields, location: str) -> str:
    """The format of the first record, from its fields (docs/DATA.md shows one record of each)."""
    keys = set(record)
    if {"response_0", "response_1"} <= keys and ({"better_response_id", "safer_response_id"} & keys):
        return "pku"
    if fields.chosen in keys and fields.rejected in keys:
        if isinstance(record[fields.chosen], list):
            return "chat"
        if fields.prompt in keys:
            return "pairs"
        # whole HH transcripts, else TRL's implicit prompt (the strings' shared opening)
        transcripts = any(_ASSISTANT in str(record[name]) for name in (fields.chosen, fields.rejected))
        return "hh" if transcripts else "implicit"
    raise DataError(f"{location}: cannot tell the format from the fields ({_names(keys) or 'none'}); accepted: "
                    "pairs (prompt, chosen, rejected strings), hh (chosen, rejected transcripts), implicit (chosen, "
                    "rejected strings that open with the same prompt), "
                    "chat (chosen, rejected message lists), pku (prompt, response_0, response_1, "
                    "better_response_id/safer_response_id); map other column names with "
                    "prompt_field=/chosen_field=/rejected_field= or pass format=")


def _optional(rec: _Record, name: str, required: bool):
    """An optional column's value: None when the record lacks it (and no mapping asked for it) or holds null."""
    if name not in rec.record and not required:
        return None
    return rec.value(name)


def _margin(rec: _Record) -> float | None:
    fields = rec.fields
    value = _optional(rec, fields.margin, fields.margin_required)
    if value is None or value == "":
        return None
    margin = None
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        try:
            margin = float(value)
        except (ValueError, OverflowError):  # not a number; an integer beyond a float's range
            pass
    if margin is not None and math.isfinite(margin):
        return margin
    # NaN or infinity would turn the margin term of the Bradley-Terry loss, and so training, into NaN.
    expected = "a number" if margin is None and not isinstance(value, (int, float)) else "a finite number"
    problem = _short(value) if isinstance(value, str) else _type_name(value)
    raise rec.fail(fields.margin, f"is {problem}, expected {expected}",
                   "write the margin as a number or leave it empty")


def _subset(rec: _Record) -> str | None:
    fields = rec.fields
    value = _optional(rec, fields.subset, fields.subset_required)
    if value is None:
        return None
    if isinstance(value, str):
        return rec.encodable(fields.subset, value)
    raise rec.fail(fields.subset, f"is {_type_name(value)}, expected a string", "write the subset name as text")


def _pair_id(rec: _Record, source_name: str, number: int) -> str:
    id_field = rec.fields.id
    if id_field is None or rec.record.get(id_field) is None:
        return f"{source_name}:{number}"
    value = rec.record[id_field]
    if value == "":
        raise rec.fail(id_field, "is an empty string", "give every pair an id, or pass id_field=None to "
                       "number the pairs by line")
    if isinstance(value, str):
        return rec.encodable(id_field, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise rec.fail(id_field, f"is {_type_name(value)}, expected a string or an integer",
                   "fix the ids, or pass id_field=None to number the pairs by line")


def pairs_to_records(pairs: Iterable[PreferencePair], style: str = "pairs") -> list[dict]:
    """Pairs as TRL-style dicts, with `id` and, when set, `margin` and `subset`.

    style "pairs": prompt is the HH transcript ending with an open "\\n\\nAssistant:" turn, and chosen and
    rejected start with the transcript's single space, so prompt + chosen == to_hh_text(prompt, chosen).
    style "chat": prompt is the list of messages; chosen and rejected are one assistant message each
    (TRL's conversational format with an explicit prompt). Both load back with `load_pairs`.
    """
    _choice("style", style, ("pairs", "chat"))
    records = []
    for pair in pairs:
        if style == "pairs":
            record = {"id": pair.id, "prompt": to_hh_text(pair.prompt) + _ASSISTANT,
                      "chosen": " " + pair.chosen, "rejected": " " + pair.rejected}
        else:
            record = {"id": pair.id, "prompt": [dict(message) for message in pair.prompt],
                      "chosen": [{"role": "assistant", "content": pair.chosen}],
                      "rejected": [{"role": "assistant", "content": pair.rejected}]}
        if pair.margin is not None:
            record["margin"] = pair.margin
        if pair.subset is not None:
            record["subset"] = pair.subset
        records.append(record)
    return records


def save_pairs_jsonl(pairs: Iterable[PreferencePair], path: str | os.PathLike, style: str = "chat") -> Path:
    """Write pairs as JSON lines (`pairs_to_records(style)` plus each pair's `meta`), atomically.

    The default "chat" style keeps every text exactly, so `load_pairs(path, identical="keep")` gives back
    equal pairs. A reader sees the old file or the complete new one, never a partial file.
    """
    pairs = list(pairs)
    lines = []
    for pair, record in zip(pairs, pairs_to_records(pairs, style)):
        if pair.meta:
            record["meta"] = pair.meta
        line = json.dumps(record, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8; the \\u escape keeps it exactly
            line = json.dumps(record)
        lines.append(line + "\n")
    return atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
