"""Preference pairs: formats in, validated `PreferencePair` records out.

`load_pairs` reads a file, a saved or hub dataset, or a named source (`resolve_source`) into
`PreferencePair` records, and returns beside them a `LoadReport` that counts every real-data quirk and
what was done about it. `split_pairs` makes the seeded train/val/eval split; `pairs_to_records` and
`save_pairs_jsonl` write pairs back out in TRL's formats. docs/DATA.md lists the formats and the rules.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import re
import reprlib
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from marsrm.io import atomic_write


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


# --------------------------------------------------------------------------------------------------
# Named sources

HH_SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")
FORMATS = ("pairs", "hh", "chat", "pku")
ROLES = ("user", "assistant", "system")

# data.py -> marsrm -> src -> repository root
_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOCAL_PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.parquet")


@dataclass(frozen=True)
class Source:
    """Where a named source's pairs come from: a local copy when one was found, else the hub.

    name: the named source, e.g. "hh-rlhf/helpful-base"; pair ids start with it.
    path: the local file, or None when there is none and the hub must be tried.
    hub: the hub dataset's name; hub_kwargs: the rest of the `datasets.load_dataset` call.
    subset: given to every pair (the hh-rlhf subset), or None.
    format: the format the source is published in.
    expected: the local copy's path relative to a data folder (for the error message).
    looked: every local path checked, for the error message when the hub fails too.
    """

    name: str
    path: Path | None
    hub: str
    hub_kwargs: dict
    subset: str | None
    format: str
    expected: str
    looked: tuple[str, ...] = ()


def data_dirs() -> list[Path]:
    """Folders searched for local copies of named sources, in order.

    $MARS_DATA_DIR alone when it is set; otherwise ../shared/data relative to the current directory,
    then relative to the repository root (so the shared copy is found from anywhere inside the checkout).
    """
    if os.environ.get("MARS_DATA_DIR"):
        return [Path(os.environ["MARS_DATA_DIR"]).expanduser()]
    dirs = []
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate not in dirs:
            dirs.append(candidate)
    return dirs


def resolve_source(name: str, *, split: str | None = None) -> Source:
    """Find a named source: "hh-rlhf/<subset>", "ultrafeedback" or "pku-saferlhf".

    Looks for a local copy in each of `data_dirs()` (hh-rlhf: hh-rlhf/<subset>-test.jsonl.gz;
    ultrafeedback and pku-saferlhf: one *.jsonl, *.jsonl.gz or *.parquet file in that folder, the one
    named after the split when there are several). A `split` other than the published test split skips
    the local copies, which hold only that split. Raises DataError for a name that is not a named source.
    """
    if name.startswith("hh-rlhf/") or name == "hh-rlhf":
        subset = name.partition("/")[2]
        if subset not in HH_SUBSETS:
            raise DataError(f"{name}: unknown hh-rlhf subset {subset!r}; use one of " + ", ".join(
                f"hh-rlhf/{s}" for s in HH_SUBSETS))
        default_split, folder = "test", "hh-rlhf"
        hub, hub_kwargs, fmt = "Anthropic/hh-rlhf", {"data_dir": subset}, "hh"
    elif name == "ultrafeedback":
        subset, default_split, folder = None, "test_prefs", "ultrafeedback"
        hub, hub_kwargs, fmt = "HuggingFaceH4/ultrafeedback_binarized", {}, "chat"
    elif name == "pku-saferlhf":
        subset, default_split, folder = None, "test", "pku-saferlhf"
        hub, hub_kwargs, fmt = "PKU-Alignment/PKU-SafeRLHF", {}, "pku"
    else:
        raise DataError(f"{name}: not a named source; named sources are "
                        + ", ".join([f"hh-rlhf/{s}" for s in HH_SUBSETS] + ["ultrafeedback", "pku-saferlhf"]))
    split = split or default_split
    hub_kwargs = {**hub_kwargs, "split": split}
    expected = f"{folder}/{subset}-{split}.jsonl.gz" if folder == "hh-rlhf" else f"{folder}/{split}.jsonl"
    looked: list[str] = []
    path = None
    if split == default_split:
        for root in data_dirs():
            if folder == "hh-rlhf":
                looked.append(str(root / expected))
                path = root / expected if (root / expected).is_file() else None
            else:
                looked.append(str(root / folder) + "/{" + ",".join(_LOCAL_PATTERNS) + "}")
                path = _pick_local_file(root / folder, split)
            if path is not None:
                break
    return Source(name, path, hub, hub_kwargs, subset, fmt, expected, tuple(looked))


def _pick_local_file(folder: Path, split: str) -> Path | None:
    """The one data file in `folder`, or the one named after `split` when there are several."""
    if not folder.is_dir():
        return None
    files = sorted({p for pattern in _LOCAL_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    named = [p for p in files if p.name.startswith(split)]
    if len(named) == 1:
        return named[0]
    if len(files) == 1:
        return files[0]
    if files:
        raise DataError(f"{folder}: cannot tell which of {[p.name for p in files]} holds the {split!r} split; "
                        f"keep one file per split, named after it (e.g. {split}.jsonl)")
    return None


# --------------------------------------------------------------------------------------------------
# Reading records: each reader yields (number, record), numbers 1-based lines or rows


@dataclass
class _Rows:
    name: str  # the source's name in ids: the file's name, the named source or the hub name
    where: str  # where it was read from, for the report
    unit: str  # "line" for line-based files (errors say FILE:LINE), "row" otherwise (FILE:row N)
    records: Iterator[tuple[int, Any]]
    label: str = ""  # the name errors give, when it differs from `name`: a named source's file
    uniform: bool = False  # a table: every record has the same columns

    @property
    def file(self) -> str:
        return self.label or self.name

    def location(self, number: int) -> str:
        return f"{self.file}:{number}" if self.unit == "line" else f"{self.file}:row {number}"


class _BadJSON(Exception):
    """Why `_parse_json` failed, as (what, line); line is None when JSON gives none."""

    def __init__(self, what: str, line: int | None = None):
        super().__init__(what)
        self.what, self.line = what, line


def _parse_json(text: str):
    """`json.loads`, with each way bad input makes it fail (not only JSONDecodeError) as one _BadJSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _BadJSON(f"{error.msg} at column {error.colno}", error.lineno) from None
    except RecursionError:  # "[[[[..." deeper than the interpreter's recursion limit
        raise _BadJSON("nested too deeply to read") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise _BadJSON(f"an integer with more than {sys.get_int_max_str_digits()} digits") from None


def _json_lines(handle: Iterable[bytes], name: str) -> Iterator[tuple[int, Any]]:
    """Parse one JSON value per line, naming the line in every error; blank lines are skipped."""
    number = records = 0
    try:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{name}:{number}: invalid UTF-8 (byte 0x{raw[error.start]:02x} at byte "
                                f"{error.start + 1} of the line); re-save the file as UTF-8") from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not text.strip():
                continue
            try:
                record = _parse_json(text)
            except _BadJSON as error:
                raise DataError(f"{name}:{number}: invalid JSON ({error.what}); "
                                "each line must hold one JSON object") from None
            records += 1
            yield number, record
    except EOFError:
        raise DataError(f"{name}: the gzip stream is truncated after line {number}; "
                        "re-download or re-compress the file") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{name}: not a readable gzip file ({_first_line(error)}); "
                        "decompress it or drop the .gz suffix if it is plain text") from None
    except OSError as error:  # a read that fails (a vanished or unreadable file, an I/O error)
        raise DataError(f"{name}: cannot read it ({_first_line(error)})") from None
    if records == 0:
        raise DataError(f"{name}: the file is empty")


def _read_jsonl(path: Path) -> _Rows:
    def records():
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            handle = opener(path, "rb")
        except OSError as error:
            raise DataError(f"{path.name}: cannot read it ({_first_line(error)})") from None
        with handle:
            yield from _json_lines(handle, path.name)

    return _Rows(path.name, str(path), "line", records())


def _read_json(path: Path) -> _Rows:
    """A .json file: a top-level list of objects, or (as many published .json files are) JSON lines."""
    name = path.name
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except EOFError:
        raise DataError(f"{name}: the gzip stream is truncated; re-download or re-compress the file") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{name}: not a readable gzip file ({_first_line(error)})") from None
    except OSError as error:
        raise DataError(f"{name}: cannot read it ({_first_line(error)})") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{name}:{line}: invalid UTF-8 (byte 0x{raw[error.start]:02x}); "
                        "re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        value = _parse_json(text)
    except _BadJSON as error:
        if text.lstrip().startswith("{"):  # JSON lines: the line reader names the line that is wrong
            return _Rows(name, str(path), "line", _json_lines(io.BytesIO(raw), name))
        where = f"{name}:{error.line}" if error.line else name
        raise DataError(f"{where}: invalid JSON ({error.what})") from None
    # JSON lines holding one record. Lines are split at "\n" only, as the line reader does: a string may
    # hold U+2028 or U+0085, which str.splitlines would count as line breaks.
    if isinstance(value, dict) and "\n" not in text.strip():
        return _Rows(name, str(path), "line", _json_lines(io.BytesIO(raw), name))
    if not isinstance(value, list):
        raise DataError(f"{name}: expected a top-level list of objects, found {_type_name(value)}; "
                        "write a JSON list, or one object per line as .jsonl")
    if not value:
        raise DataError(f"{name}: the file is empty (an empty list)")
    return _Rows(name, str(path), "row", enumerate(value, 1))


def _first_line(error: Exception) -> str:
    """An exception as one line, for a DataError that must stay one line.

    A wrapper that only says "an error occurred" (datasets' DatasetGenerationError) gives way to its cause.
    """
    while error.__cause__ is not None and type(error).__name__ == "DatasetGenerationError":
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _dataset_records(dataset, name: str, what: str = "file") -> Iterator[tuple[int, Any]]:
    if len(dataset) == 0:
        raise DataError(f"{name}: the {what} is empty (no rows)")
    yield from enumerate(dataset, 1)


def _check_columns(where: str, columns: list[str]) -> None:
    """Column names must be unique and non-empty: readers rename or drop one of two colliding columns."""
    seen = set()
    for number, column in enumerate(columns, 1):
        if not column:
            raise DataError(f"{where} leaves column {number} unnamed; name every column")
        if column in seen:
            raise DataError(f"{where} names column {_short(column)} twice; rename one of them")
        seen.add(column)


def _utf8_error(path: Path) -> DataError:
    """The error for a text file that is not UTF-8, naming the first line that is not (read line by line)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return DataError(f"{path.name}:{number}: invalid UTF-8 (byte 0x{raw[error.start]:02x}); "
                                 "re-save the file as UTF-8")
    return DataError(f"{path.name}: invalid UTF-8; re-save the file as UTF-8")


def _csv_header(path: Path) -> list[str]:
    """The header of a CSV file, after checking that a row follows it."""
    import csv

    name = path.name
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)  # reads the header's lines only; `handle` goes on after them
        if not header:
            raise DataError(f"{name}: the file is empty")
        _check_columns(f"{name}:1: the header", header)
        for number, column in enumerate(header, 1):
            if "\x00" in column:  # pandas would cut the name there, and then miss the column
                raise DataError(f"{name}:1: the header's column {number} ({_short(column)}) holds a NUL "
                                "character; remove it")
        if not any(line.strip() for line in handle):
            raise DataError(f"{name}: the file is empty (a header but no rows)")
    return header


def _check_cells(table, name: str) -> None:
    """Fail now, naming the row and the column, on a cell that cannot be read (Arrow reads a Parquet file's
    text without checking it is UTF-8), rather than with a UnicodeDecodeError halfway through the load."""
    try:
        table.validate(full=True)
    except Exception as error:
        for column, values in zip(table.column_names, table.columns):
            for number in range(len(values)):
                try:
                    values[number].as_py()
                except Exception as cell_error:
                    raise DataError(f"{name}:row {number + 1}: field {_short(column)} cannot be read "
                                    f"({_first_line(cell_error)}); re-write the file") from None
        raise DataError(f"{name}: {_first_line(error)}; re-write the file") from None


def _read_with_datasets(path: Path, kind: str) -> _Rows:
    """Parquet and CSV through the `datasets` library; any failure of a bad file becomes one DataError.

    Each read builds its Arrow table in a fresh cache folder, removed afterwards: datasets' own cache knows a
    file by its path and modification time, so it would hand back the old rows of a file rewritten within
    the same timestamp (or copied with its time kept).
    """
    import datasets

    name = path.name
    cache = tempfile.mkdtemp(prefix="marsrm-data-")
    try:
        if kind == "parquet":
            import pyarrow.parquet

            _check_columns(f"{name}: the schema", pyarrow.parquet.read_schema(path).names)
            dataset = datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
        else:
            header = _csv_header(path)
            # Every column read as text, empty cells kept as "": pandas would otherwise turn an answer
            # "42" into a number and an empty answer into a missing value.
            features = datasets.Features({column: datasets.Value("string") for column in header})
            dataset = datasets.Dataset.from_csv(str(path), features=features, keep_default_na=False,
                                                cache_dir=cache, keep_in_memory=True)
        _check_cells(dataset.data.table, name)
    except DataError:
        raise
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except Exception as error:  # pyarrow, pandas and datasets each raise their own types for a bad file
        raise DataError(f"{name}: cannot read it as {kind.upper()} ({_first_line(error)}); check the file is a "
                        f"complete {kind.upper()} file") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return _Rows(name, str(path), "row", _dataset_records(dataset, name), uniform=True)


def _pick_split(dataset, split: str | None, name: str):
    """One split of a DatasetDict: `split`, else "train", else "test", else the only one."""
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{name}: split={split!r} given, but it holds a single dataset, not a "
                            "DatasetDict; leave split unset")
        return dataset
    splits = sorted(dataset)
    if split is not None:
        if split not in dataset:
            raise DataError(f"{name}: no split {split!r}; it has {splits}; pass split= one of them")
        return dataset[split]
    for default in ("train", "test"):
        if default in dataset:
            return dataset[default]
    if len(splits) == 1:
        return dataset[splits[0]]
    raise DataError(f"{name}: several splits {splits} and none is 'train' or 'test'; pass split=")


def _read_saved_dataset(path: Path, split: str | None) -> _Rows:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError or its own types for a foreign folder
        raise DataError(f"{path.name}: not a dataset saved with Dataset.save_to_disk ({_first_line(error)}); "
                        "point at a data file or a saved dataset folder") from None
    dataset = _pick_split(dataset, split, path.name)
    return _Rows(path.name, str(path), "row", _dataset_records(dataset, path.name, "dataset"), uniform=True)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None when it may be.

    Offline, `datasets.load_dataset` retries for about half a minute before failing; a failed name lookup
    answers the same question at once. Behind a proxy the local lookup proves nothing, so it is skipped.
    """
    import socket
    from urllib.parse import urlparse

    import datasets
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"cannot resolve {host}: {error}"
    return None


def _load_hub_dataset(name: str, **kwargs):
    """`datasets.load_dataset(name, **kwargs)`, or DataError(why it failed, one line).

    The one place that talks to the hub, so that tests can stand in for it.
    """
    reason = _hub_unreachable()
    if reason:
        raise DataError(reason)
    import datasets

    try:
        return datasets.load_dataset(name, **kwargs)
    except Exception as error:  # connection, authentication and not-found errors all mean "not from the hub"
        raise DataError(_first_line(error)) from None


def _open_source(source, split: str | None) -> tuple[_Rows, Source | None]:
    """Turn `source` (a path, a named source or a hub name) into records; the Source when it was named."""
    path = Path(source).expanduser()
    text = str(source)
    if path.is_dir():
        return _read_saved_dataset(path, split), None
    if path.is_file():
        if split is not None:
            raise DataError(f"{path.name}: split= applies to dataset folders and hub datasets, not to a file; "
                            "leave split unset")
        lowered = path.name.lower()
        if lowered.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return _read_jsonl(path), None
        if lowered.endswith((".json", ".json.gz")):
            return _read_json(path), None
        if lowered.endswith(".parquet"):
            return _read_with_datasets(path, "parquet"), None
        if lowered.endswith(".csv"):
            return _read_with_datasets(path, "csv"), None
        raise DataError(f"{path.name}: unknown file type; accepted: .jsonl, .jsonl.gz, .json, .parquet, .csv, "
                        "or a folder saved with Dataset.save_to_disk")
    if not isinstance(source, Path) and (text.startswith("hh-rlhf/") or text in ("hh-rlhf", "ultrafeedback",
                                                                                  "pku-saferlhf")):
        named = resolve_source(text, split=split)
        if named.path is not None:
            rows = _read_jsonl(named.path) if ".jsonl" in named.path.name else _read_with_datasets(named.path, "parquet")
            return dataclasses.replace(rows, name=named.name, label=rows.name), named
        try:
            dataset = _load_hub_dataset(named.hub, **named.hub_kwargs)
        except DataError as error:
            looked = "; ".join(named.looked) or "no local copy (a split other than the published one)"
            raise DataError(f"{text}: no local copy (looked in {looked}) and the hub failed "
                            f"(load_dataset({named.hub!r}, {_kwargs_text(named.hub_kwargs)}): {error}); "
                            f"set MARS_DATA_DIR to a folder holding {named.expected}") from None
        where = f"hub {named.hub} ({_kwargs_text(named.hub_kwargs)})"
        return _Rows(named.name, where, "row", _dataset_records(dataset, named.name, "dataset"), uniform=True), named
    looks_like_path = (isinstance(source, Path) or text.startswith(("/", ".", "~"))
                       or re.search(r"\.(jsonl|json|gz|parquet|csv)$", text, re.IGNORECASE))
    if not looks_like_path and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        try:
            dataset = _load_hub_dataset(text, **({"split": split} if split else {}))
        except DataError as error:
            raise DataError(f"{text}: not a file here, not a named source, and load_dataset({text!r}) failed "
                            f"({error}); give a path to a local file or folder") from None
        dataset = dataset if split else _pick_split(dataset, None, text)
        return _Rows(text, f"hub {text}", "row", _dataset_records(dataset, text, "dataset"), uniform=True), None
    raise DataError(f"{text}: no such file or folder (and not a named source: hh-rlhf/<subset>, ultrafeedback, "
                    "pku-saferlhf); check the path")


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


# --------------------------------------------------------------------------------------------------
# Records to pairs

_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_SYSTEM = "\n\nSystem:"


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


def _drop_one_space(text: str) -> str:
    """The transcript format puts one space after "Speaker:"; it is not part of the text."""
    return text[1:] if text.startswith(" ") else text


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
    text = transcript
    if text.lstrip("\n").startswith(("Human:", "Assistant:", "System:")):
        text = "\n\n" + text.lstrip("\n")  # tolerate a transcript written without the leading blank line
    parts = _TURN.split(text)
    head, turns = parts[0], parts[1:]
    messages = []
    if head.startswith(_SYSTEM):
        messages.append({"role": "system", "content": _drop_one_space(head[len(_SYSTEM):])})
    elif head:
        raise rec.fail(field_name, f"does not start with a Human turn (it starts {head[:30]!r})",
                       'an HH transcript starts with "\\n\\nHuman:"')
    for speaker, content in zip(turns[::2], turns[1::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": _drop_one_space(content)})
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


_CONVERTERS = {"pairs": _from_pairs, "hh": _from_hh, "chat": _from_chat, "pku": _from_pku}


def _detect_format(record: dict, fields: _Fields, location: str) -> str:
    """The format of the first record, from its fields (docs/DATA.md shows one record of each)."""
    keys = set(record)
    if {"response_0", "response_1"} <= keys and ({"better_response_id", "safer_response_id"} & keys):
        return "pku"
    if fields.chosen in keys and fields.rejected in keys:
        if isinstance(record[fields.chosen], list):
            return "chat"
        return "pairs" if fields.prompt in keys else "hh"
    raise DataError(f"{location}: cannot tell the format from the fields ({_names(keys) or 'none'}); accepted: "
                    "pairs (prompt, chosen, rejected strings), hh (chosen, rejected transcripts), "
                    "chat (chosen, rejected message lists), pku (prompt, response_0, response_1, "
                    "better_response_id/safer_response_id); map other column names with "
                    "prompt_field=/chosen_field=/rejected_field= or pass format=")


# --------------------------------------------------------------------------------------------------
# The report

QUIRK_RULES = {
    "identical": "identical chosen and rejected responses",
    "prefix_mismatch": "dialogue before the final turn differs between chosen and rejected",
    "empty": "empty (whitespace-only) chosen or rejected response",
}


@dataclass
class Quirk:
    """How often one real-data quirk occurred, what was done, and which pairs had it (kept or not)."""

    rule: str
    action: str
    count: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """What `load_pairs` read and decided.

    source: the name ids start with; location: where it was read from; format: as detected or forced.
    rows: records read; kept: pairs returned; quirks: per quirk (identical, prefix_mismatch, empty) its
    count over all rows, the action taken and the ids; dropped: ids of the pairs not returned.
    """

    source: str
    location: str
    format: str
    rows: int = 0
    kept: int = 0
    quirks: dict[str, Quirk] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line: what was read, kept, and each quirk's count and action."""
        lines = [f"{self.source}: {self.rows:,} rows read ({self.format} format, from {self.location})",
                 f"  {self.kept:,} pairs kept, {len(self.dropped):,} dropped"]
        for quirk in self.quirks.values():
            lines.append(f"  {quirk.rule}: {quirk.count:,} -> {quirk.action}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass
class LoadResult:
    """The pairs `load_pairs` kept, and the report of how it got them."""

    pairs: list[PreferencePair]
    report: LoadReport


def _choice(setting: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise DataError(f"{setting}={value!r} is not a valid setting; use one of {', '.join(map(repr, allowed))}")


def _margin(rec: _Record) -> float | None:
    fields = rec.fields
    if fields.margin not in rec.record and not fields.margin_required:
        return None
    value = rec.value(fields.margin)
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
    if fields.subset not in rec.record and not fields.subset_required:
        return None
    value = rec.value(fields.subset)
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


def _check_mapped(rows: _Rows, number: int, record: dict, fields: _Fields, first: bool) -> None:
    """Each column a *_field setting names must be in `record`. Missing from the first record, the rest are read
    to tell a name no row has (the setting is wrong) from a gap in some rows (those rows are)."""
    for setting, column in fields.mapped:
        if column in record:
            continue
        flag, what = "--" + setting.replace("_", "-"), setting.removesuffix("_field")
        columns = set(record)
        if first and _no_row_has(rows, column, columns):
            raise DataError(f"{rows.location(number)}: field {_short(column)} is missing from every row: no such "
                            f"column (columns: {_names(columns)}); pass the one that holds the {what} to {flag} "
                            f"or {setting}=")
        raise DataError(f"{rows.location(number)}: field {_short(column)} is missing (the record has: "
                        f"{_names(record)}); add it, or pass the column that holds the {what} to {flag} or "
                        f"{setting}=")


def _no_row_has(rows: _Rows, column: str, columns: set) -> bool:
    """Whether no record left in `rows` has `column`; adds the columns of those read to `columns`."""
    if rows.uniform:
        return True
    for _, record in rows.records:
        if isinstance(record, dict):
            if column in record:
                return False
            columns.update(record)
    return True


def load_pairs(source, *, format: str = "auto", prompt_field: str | None = None,
               chosen_field: str | None = None, rejected_field: str | None = None,
               margin_field: str | None = None, subset_field: str | None = None, preference: str = "better",
               identical: str = "drop", prefix_mismatch: str = "keep-chosen", empty: str = "keep",
               split: str | None = None, id_field: str | None = "id") -> LoadResult:
    """Read preference pairs from a file, a dataset folder, a hub dataset or a named source.

    source: a .jsonl/.jsonl.gz/.json/.parquet/.csv file, a folder saved with `save_to_disk`, a named source
        ("hh-rlhf/<subset>", "ultrafeedback", "pku-saferlhf"; see `resolve_source`), or a hub name "owner/name".
    format: "auto" (from the first record's fields), "pairs", "hh", "chat" or "pku".
    *_field: column names, when they are not prompt/chosen/rejected/margin/subset. A margin or subset
        column is read when present, and required when named here.
    preference: for PKU-SafeRLHF, "better" or "safer": which id column marks the chosen response.
    identical: "drop" (default; no preference signal) or "keep" pairs whose responses are equal.
    prefix_mismatch: "keep-chosen" (default; the prompt is the chosen transcript's) or "drop" pairs whose
        dialogues before the final turn differ.
    empty: "keep" (default; an empty answer is a legitimately bad answer) or "drop" pairs with a
        whitespace-only response.
    split: the split of a DatasetDict folder or hub dataset (default "train", else "test"); for a named
        source, a split other than the published test split skips local copies.
    id_field: a column holding the pair's own id (files written by `save_pairs_jsonl` have one); records
        without it get "<source-name>:<line-or-row>", 1-based. Ids must be unique.
    Returns the kept pairs in input order and a `LoadReport`. Raises DataError, one line naming the file,
    the line or row and the field, for every problem with the input.
    """
    _choice("format", format, ("auto",) + FORMATS)
    _choice("preference", preference, ("better", "safer"))
    _choice("identical", identical, ("drop", "keep"))
    _choice("prefix_mismatch", prefix_mismatch, ("keep-chosen", "drop"))
    _choice("empty", empty, ("keep", "drop"))
    given = {"prompt_field": prompt_field, "chosen_field": chosen_field, "rejected_field": rejected_field,
             "margin_field": margin_field, "subset_field": subset_field}
    fields = _Fields(prompt=prompt_field or "prompt", chosen=chosen_field or "chosen",
                     rejected=rejected_field or "rejected", margin=margin_field or "margin",
                     subset=subset_field or "subset", margin_required=margin_field is not None,
                     subset_required=subset_field is not None, id=id_field,
                     mapped=tuple((setting, column) for setting, column in given.items() if column))
    rows, named = _open_source(source, split)
    actions = {"identical": identical, "prefix_mismatch": prefix_mismatch, "empty": empty}
    report = LoadReport(rows.name, rows.where, format,
                        quirks={name: Quirk(rule, actions[name]) for name, rule in QUIRK_RULES.items()})
    pairs: list[PreferencePair] = []
    first_seen: dict[str, str] = {}
    for number, record in rows.records:
        location = rows.location(number)
        if not isinstance(record, dict):
            raise DataError(f"{location}: the record is {_type_name(record)}, expected an object with fields "
                            "like prompt, chosen, rejected; write one JSON object per record")
        _check_mapped(rows, number, record, fields, first=report.rows == 0)
        if report.format == "auto":  # decided once, from the first record
            report.format = named.format if named else _detect_format(record, fields, location)
        rec = _Record(record, location, report.format, fields, preference)
        prompt, chosen, rejected, prefix_differs = _CONVERTERS[report.format](rec)
        pair_id = _pair_id(rec, rows.name, number)
        if pair_id in first_seen:
            raise rec.fail(fields.id, f"repeats the id {_short(pair_id)} of {first_seen[pair_id]}",
                           "ids must be unique; fix them, or pass id_field=None to number the pairs by line")
        first_seen[pair_id] = location
        margin = _margin(rec)
        subset = named.subset if named and named.subset else _subset(rec)
        quirks = [name for name, found in (("identical", chosen == rejected),
                                           ("prefix_mismatch", prefix_differs),
                                           ("empty", not chosen.strip() or not rejected.strip())) if found]
        report.rows += 1
        for name in quirks:
            report.quirks[name].count += 1
            report.quirks[name].ids.append(pair_id)
        if any(actions[name] == "drop" for name in quirks):
            report.dropped.append(pair_id)
            continue
        meta = dict(record["meta"]) if isinstance(record.get("meta"), dict) else {}  # as save_pairs_jsonl wrote it
        if quirks:
            meta["quirks"] = quirks
        pairs.append(PreferencePair(id=pair_id, prompt=tuple(prompt), chosen=chosen, rejected=rejected,
                                    margin=margin, subset=subset, meta=meta))
    report.kept = len(pairs)
    return LoadResult(pairs, report)


# --------------------------------------------------------------------------------------------------
# Splitting and writing


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
