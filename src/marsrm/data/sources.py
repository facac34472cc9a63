"""Where pairs come from: named sources, the data folders holding their local copies, and the hub.

`resolve_source` finds a named source ("hh-rlhf/<subset>", "ultrafeedback", "pku-saferlhf") in `data_dirs()`
(the shared data root, or $MARS_DATA_DIR); `_open_source` turns any source (a file, a saved dataset folder, a
named source, a hub name) into the rows `readers` reads. `_load_hub_dataset` is the one place that talks to
the hub.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from marsrm.data.errors import DataError, _first_line
from marsrm.data.readers import (_dataset_records, _pick_split, _read_json, _read_jsonl, _read_saved_dataset,
                                 _read_with_datasets, _Rows)

HH_SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")

# sources.py -> data -> marsrm -> src -> repository root
_REPO_ROOT = Path(__file__).resolve().parents[3]
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


def _open_source(source, split: str | None,
                 defaults: tuple[str, ...] = ("train", "test")) -> tuple[_Rows, Source | None]:
    """Turn `source` (a path, a named source or a hub name) into records; the Source when it was named.
    defaults: the splits tried in order when `split` is None and the source has several (a named source
    always defaults to its published test split)."""
    path = Path(source).expanduser()
    text = str(source)
    if path.is_dir():
        return _read_saved_dataset(path, split, defaults), None
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
            rows = dataclasses.replace(rows, name=named.name, label=rows.name, split=named.hub_kwargs["split"])
            return rows, named
        try:
            dataset = _load_hub_dataset(named.hub, **named.hub_kwargs)
        except DataError as error:
            looked = "; ".join(named.looked) or "no local copy (a split other than the published one)"
            raise DataError(f"{text}: no local copy (looked in {looked}) and the hub failed "
                            f"(load_dataset({named.hub!r}, {_kwargs_text(named.hub_kwargs)}): {error}); "
                            f"set MARS_DATA_DIR to a folder holding {named.expected}") from None
        where = f"hub {named.hub} ({_kwargs_text(named.hub_kwargs)})"
        return _Rows(named.name, where, "row", _dataset_records(dataset, named.name, "dataset"), uniform=True,
                     split=named.hub_kwargs["split"]), named
    looks_like_path = (isinstance(source, Path) or text.startswith(("/", ".", "~"))
                       or re.search(r"\.(jsonl|json|gz|parquet|csv)$", text, re.IGNORECASE))
    if not looks_like_path and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        try:
            dataset = _load_hub_dataset(text, **({"split": split} if split else {}))
        except DataError as error:
            raise DataError(f"{text}: not a file here, not a named source, and load_dataset({text!r}) failed "
                            f"({error}); give a path to a local file or folder") from None
        if not split:
            dataset, split = _pick_split(dataset, None, text, defaults)
        return _Rows(text, f"hub {text}", "row", _dataset_records(dataset, text, "dataset"), uniform=True,
                     split=split), None
    raise DataError(f"{text}: no such file or folder (and not a named source: hh-rlhf/<subset>, ultrafeedback, "
                    "pku-saferlhf); check the path")


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
