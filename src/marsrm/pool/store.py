"""The paraphrase cache: generated texts on disk, keyed so that a re-run recomputes only what is missing.

Layout: `<cache>/<backend>-<settings hash>/` holds `settings.json` (what the hash covers: model identity,
decoding, prompts) and `shard-<time>-<random>.jsonl` files, one JSON record per line:
{"key": …, "kind": "paraphrase" | "rewrite-…", "n": …, "seed": …, "outputs": [...], "tokens": …}.
`key` hashes (kind, text, other, n, seed). A shard is written to a temporary name and renamed, so it is
visible complete or not at all; a build killed between two shards loses only the work after the last one.
Shards are read in name (time) order and the first record for a key wins, so a key written twice (two
processes, or a kill between a write and its bookkeeping) never changes what a reader sees.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from marsrm.io import atomic_write_json, atomic_write_text
from marsrm.pool.paraphrase import stable_hash


def settings_key(settings: dict) -> str:
    return f"{settings.get('kind', 'paraphraser')}-{stable_hash(settings)[:16]}"


def entry_key(kind: str, text: str, other: str, n: int, seed: int) -> str:
    return stable_hash(kind, text, other, int(n), int(seed))[:32]


class ParaphraseStore:
    """Key → record store for one paraphraser + settings; safe against kills and concurrent writers."""

    def __init__(self, root: str | os.PathLike, settings: dict):
        self.directory = Path(root) / settings_key(settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / "settings.json").exists():
            atomic_write_json(self.directory / "settings.json", settings)
        self._records: dict[str, dict] = {}
        self._seen: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read shards written since the last look (by this or another process)."""
        for path in sorted(self.directory.glob("shard-*.jsonl")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    record = json.loads(line)
                    self._records.setdefault(record["key"], record)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def put(self, records: list[dict]) -> Path | None:
        """Write `records` as one new shard (atomically) and make them visible to `get`."""
        records = [r for r in records if r["key"] not in self._records]
        if not records:
            return None
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        path = atomic_write_text(self.directory / name, text)
        self._seen.add(name)
        for record in records:
            self._records.setdefault(record["key"], record)
        return path
