"""`load_pairs`: a source's rows, converted and checked, as `PreferencePair`s with a `LoadReport`.

The orchestration of the package: `sources` opens the source, `readers` numbers its rows, `formats` turns
each row into a pair; here the ids are checked unique and each real-data quirk (identical responses,
differing dialogues, empty responses) is counted and kept or dropped as asked.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from marsrm.data.errors import DataError, _choice, _names, _short, _type_name
from marsrm.data.formats import (_CONVERTERS, FORMATS, PreferencePair, _detect_format, _Fields, _margin,
                                 _pair_id, _Record, _subset)
from marsrm.data.readers import _Rows
from marsrm.data.sources import _open_source

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

    source: the name ids start with; location: where it was read from; format: as detected or forced;
    split: the split read, for a source with splits (a dataset folder or hub dataset, a named source), else None.
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
    split: str | None = None

    def summary(self) -> str:
        """A few lines for the command line: what was read, kept, and each quirk's count and action."""
        split = f", split {self.split!r}" if self.split is not None else ""
        lines = [f"{self.source}: {self.rows:,} rows read ({self.format} format{split}, from {self.location})",
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
               split: str | None = None, default_splits: tuple[str, ...] = ("train", "test"),
               id_field: str | None = "id") -> LoadResult:
    """Read preference pairs from a file, a dataset folder, a hub dataset or a named source.

    source: a .jsonl/.jsonl.gz/.json/.parquet/.csv file, a folder saved with `save_to_disk`, a named source
        ("hh-rlhf/<subset>", "ultrafeedback", "pku-saferlhf"; see `resolve_source`), or a hub name "owner/name".
    format: "auto" (from the first record's fields), "pairs", "hh", "implicit", "chat" or "pku".
    *_field: column names, when they are not prompt/chosen/rejected/margin/subset. A margin or subset
        column is read when present, and required when named here.
    preference: for PKU-SafeRLHF, "better" or "safer": which id column marks the chosen response.
    identical: "drop" (default; no preference signal) or "keep" pairs whose responses are equal.
    prefix_mismatch: "keep-chosen" (default; the prompt is the chosen transcript's) or "drop" pairs whose
        dialogues before the final turn differ.
    empty: "keep" (default; an empty answer is a legitimately bad answer) or "drop" pairs with a
        whitespace-only response.
    split: the split of a DatasetDict folder or hub dataset (default: the first of `default_splits` it has,
        else its only split); for a named source (default: its published test split), a split other than the
        published test split skips local copies. The report names the split read.
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
    rows, named = _open_source(source, split, tuple(default_splits))
    actions = {"identical": identical, "prefix_mismatch": prefix_mismatch, "empty": empty}
    report = LoadReport(rows.name, rows.where, format, split=rows.split,
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
