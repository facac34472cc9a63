"""Reading records: files, saved datasets and hub datasets as rows, each numbered by its 1-based line or row.

`_Rows` carries the records with the name errors give them (`FILE:LINE` for line-based files, `FILE:row N`
otherwise); each reader turns every way a file can be unreadable (bad UTF-8, bad JSON, a truncated gzip
stream, a broken Parquet or CSV file) into one `DataError` line.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from marsrm.data.errors import DataError, _first_line, _short, _type_name


@dataclass
class _Rows:
    name: str  # the source's name in ids: the file's name, the named source or the hub name
    where: str  # where it was read from, for the report
    unit: str  # "line" for line-based files (errors say FILE:LINE), "row" otherwise (FILE:row N)
    records: Iterator[tuple[int, Any]]
    label: str = ""  # the name errors give, when it differs from `name`: a named source's file
    uniform: bool = False  # a table: every record has the same columns
    split: str | None = None  # the split read, for a source that has splits

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


def _pick_split(dataset, split: str | None, name: str, defaults: tuple[str, ...] = ("train", "test")):
    """(one split of a DatasetDict, its name): `split`, else the first of `defaults` it has, else the only one.
    A single dataset is returned with the name None."""
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{name}: split={split!r} given, but it holds a single dataset, not a "
                            "DatasetDict; leave split unset")
        return dataset, None
    splits = sorted(dataset)
    if split is not None:
        if split not in dataset:
            raise DataError(f"{name}: no split {split!r}; it has {splits}; pass split= one of them")
        return dataset[split], split
    for default in defaults:
        if default in dataset:
            return dataset[default], default
    if len(splits) == 1:
        return dataset[splits[0]], splits[0]
    raise DataError(f"{name}: several splits {splits} and none is {' or '.join(map(repr, defaults))}; pass split= "
                    "(on the command line --split for --data, --eval-split for --eval-data)")


def _read_saved_dataset(path: Path, split: str | None, defaults: tuple[str, ...] = ("train", "test")) -> _Rows:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError or its own types for a foreign folder
        raise DataError(f"{path.name}: not a dataset saved with Dataset.save_to_disk ({_first_line(error)}); "
                        "point at a data file or a saved dataset folder") from None
    dataset, split = _pick_split(dataset, split, path.name, defaults)
    return _Rows(path.name, str(path), "row", _dataset_records(dataset, path.name, "dataset"), uniform=True,
                 split=split)
