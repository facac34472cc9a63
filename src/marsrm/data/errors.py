"""`DataError`, and how its messages quote the data: one line, whatever a value or a column name holds.

Every module of the package raises `DataError`; the helpers here word what they quote (`_short`, `_names`,
`_type_name`), turn a library's exception into one line (`_first_line`) and check a setting (`_choice`).
"""
from __future__ import annotations

import reprlib


class DataError(ValueError):
    """A user's data problem, reported in one line: 'FILE:LINE: field 'X': what is wrong; how to fix it'."""


# Values and column names quoted in errors are cut short and escaped: a message stays one readable line
# whatever the data holds (a 10 MB string, a newline in a column name, a 4,000-digit number).
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 40, 2


def _short(value) -> str:
    """repr(value), escaped and cut to a few dozen characters."""
    return _REPR.repr(value)


def _names(columns) -> str:
    """Column names for a message: the first 12, each as is when printable and short, else as _short."""
    names = sorted(map(str, columns))
    shown = [name if name.isprintable() and len(name) <= 60 else _short(name) for name in names[:12]]
    return ", ".join(shown) + (", ..." if len(names) > 12 else "")


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({_short(value)})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _first_line(error: Exception) -> str:
    """An exception as one line, for a DataError that must stay one line.

    A wrapper that only says "an error occurred" (datasets' DatasetGenerationError) gives way to its cause.
    """
    while error.__cause__ is not None and type(error).__name__ == "DatasetGenerationError":
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _choice(setting: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise DataError(f"{setting}={value!r} is not a valid setting; use one of {', '.join(map(repr, allowed))}")
