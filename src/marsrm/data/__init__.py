"""Preference pairs: formats in, validated `PreferencePair` records out.

`load_pairs` reads a file, a saved or hub dataset, or a named source (`resolve_source`) into
`PreferencePair` records, and returns beside them a `LoadReport` that counts every real-data quirk and
what was done about it. `split_pairs` makes the seeded train/val/eval split; `pairs_to_records` and
`save_pairs_jsonl` write pairs back out in TRL's formats. docs/DATA.md lists the formats and the rules.

The stages, one module each, in the order a load runs them:

    sources.py   names, data folders and the hub: a source -> rows
    readers.py   files and datasets -> rows numbered by line or row
    formats.py   rows -> validated PreferencePair (TRL pairs, HH, chat, PKU), HH parsing, and back out
    load.py      load_pairs: the three above, ids checked, quirks counted, the LoadReport
    split.py     split_pairs: the seeded train/val/eval split
    errors.py    DataError and how its one-line messages quote the data
"""
from marsrm.data.errors import DataError
from marsrm.data.formats import (FORMATS, ROLES, PreferencePair, hh_turns, pairs_to_records, save_pairs_jsonl,
                                 to_hh_text)
from marsrm.data.load import QUIRK_RULES, LoadReport, LoadResult, Quirk, load_pairs
from marsrm.data.sources import HH_SUBSETS, Source, data_dirs, resolve_source
from marsrm.data.split import Split, split_pairs

__all__ = ["FORMATS", "HH_SUBSETS", "QUIRK_RULES", "ROLES", "DataError", "LoadReport", "LoadResult",
           "PreferencePair", "Quirk", "Source", "Split", "data_dirs", "hh_turns", "load_pairs",
           "pairs_to_records", "resolve_source", "save_pairs_jsonl", "split_pairs", "to_hh_text"]
