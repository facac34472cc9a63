"""The augmentation pool: n paraphrases per text, crossed into n² variants per base pair, filtered, on disk.

For each base pair, n paraphrases of the chosen and of the rejected response (and, with targets="all", of
the prompt's final user turn). Variant (i, j) = (prompt paraphrase (i + j) mod n, chosen paraphrase i,
rejected paraphrase j); it keeps its source pair's id and label.

A pool directory:
    manifest.json          written last: settings, the shard list, the filter and build report
    config.yaml            the resolved `marsrm augment` config (when built by `augment`)
    cache/<backend>-<h>/   the paraphrase cache (see `store.py`), reused by any later build
    pool-<h>/part-*.jsonl  one record per base pair: the pair, its paraphrases with verdicts, its variants
A build computes only the paraphrases missing from the cache, in shards written atomically, so a build
killed at any point and run again ends with the same pool as an uninterrupted one.

Long because building, resuming and reading a pool share its on-disk format (part files, manifest).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from marsrm.data import PreferencePair
from marsrm.io import atomic_write_json, atomic_write_text
from marsrm.pool.filter import FilterSettings, cheap_verdict, count_reasons, judge
from marsrm.pool.paraphrase import (BuildStopped, Paraphraser, PoolError, Task, derive_seed, join_segments,
                                    split_segments, stable_hash, word_count)
from marsrm.pool.store import ParaphraseStore, entry_key

FORMAT = "marsrm-pool/1"
FIELDS = ("prompt", "chosen", "rejected")
TARGETS = ("all", "responses")
FALLBACKS = ("drop", "source")
SHARD_PAIRS = 500


# ---------------------------------------------------------------------------------------------
# Variants: the paper's crossing scheme
# ---------------------------------------------------------------------------------------------

def last_user_turn(prompt) -> int | None:
    """Index of the final user message in `prompt` (the turn a prompt paraphrase rewrites), or None."""
    for index in range(len(prompt) - 1, -1, -1):
        if prompt[index].get("role") == "user":
            return index
    return None


def cross(n: int, prompt_ok, chosen_ok, rejected_ok, fallback: str = "drop") -> list[tuple[int, int, int]]:
    """The variants of one pair as (prompt k, chosen i, rejected j) index triples, in (i, j) order.

    Variant (i, j) uses prompt paraphrase (i + j) mod n, chosen i, rejected j. `*_ok` are per-paraphrase
    booleans (kept by the filter); `prompt_ok` None means the prompt is not paraphrased (k = -1: the source
    prompt). fallback "drop": a variant needs every paraphrase it uses kept; "source": a dropped paraphrase
    is replaced by its source text (index -1), and a variant that is then the base pair itself, or repeats an
    earlier variant, is left out.
    """
    out, seen = [], set()
    for i in range(n):
        for j in range(n):
            k = -1 if prompt_ok is None else (i + j) % n
            triple = [k, i, j]
            for slot, ok in ((0, prompt_ok), (1, chosen_ok), (2, rejected_ok)):
                if ok is not None and triple[slot] >= 0 and not ok[triple[slot]]:
                    triple[slot] = -1 if fallback == "source" else None
            if None in triple or triple == [-1, -1, -1] or tuple(triple) in seen:
                continue
            seen.add(tuple(triple))
            out.append(tuple(triple))
    return out


def source_hash(pair: PreferencePair) -> str:
    """The identity of a base pair's texts (prompt, chosen, rejected): 16 hex digits of SHA-256.

    Every variant carries the hash of the pair it came from as the data holds it (before any semantic
    refinement), so a reader can refuse a pool built from other texts for the same ids.
    """
    refined = pair.meta.get("refined") or {}
    chosen = refined.get("chosen") if refined.get("chosen") is not None else pair.chosen
    rejected = refined.get("rejected") if refined.get("rejected") is not None else pair.rejected
    payload = json.dumps([list(map(dict, pair.prompt)), chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def make_variant(pair: PreferencePair, record: dict, triple) -> PreferencePair:
    """The synthetic pair for one (k, i, j) triple of `record` (a pool record of `pair`)."""
    k, i, j = triple
    texts = record["paraphrases"]
    prompt = pair.prompt
    if k >= 0:
        turn = last_user_turn(prompt)
        messages = [dict(m) for m in prompt]
        messages[turn] = {**messages[turn], "content": texts["prompt"]["texts"][k]}
        prompt = tuple(messages)
    chosen = texts["chosen"]["texts"][i] if i >= 0 else pair.chosen
    rejected = texts["rejected"]["texts"][j] if j >= 0 else pair.rejected
    return PreferencePair(id=pair.id, prompt=prompt, chosen=chosen, rejected=rejected, margin=pair.margin,
                          subset=pair.subset, meta={"variant": (k, i, j), "source_hash": record["source_hash"]})


# ---------------------------------------------------------------------------------------------
# The pool as the MARS loop reads it
# ---------------------------------------------------------------------------------------------

def pair_to_dict(pair: PreferencePair) -> dict:
    return {"id": pair.id, "prompt": [dict(m) for m in pair.prompt], "chosen": pair.chosen, "rejected": pair.rejected,
            "margin": pair.margin, "subset": pair.subset}


def pair_from_dict(record: dict, refined: dict | None = None) -> PreferencePair:
    return PreferencePair(id=record["id"], prompt=tuple(dict(m) for m in record["prompt"]), chosen=record["chosen"],
                          rejected=record["rejected"], margin=record.get("margin"), subset=record.get("subset"),
                          meta={"refined": refined} if refined else {})


class Pool:
    """A built pool: for each base pair id, its variants that passed the label filter.

    pool.variants(pair_id) -> list[PreferencePair]: each keeps the base pair's id and label; meta["variant"] =
        (k, i, j), meta["source_hash"] = `source_hash` of the base pair; [] for an id the pool does not hold
    pool.sizes(pair_ids) -> int array of len(pair_ids)
    pool.record(pair_id) -> the stored record (paraphrases with verdicts and cosines)
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict, records: dict[str, dict]):
        self.directory = Path(directory)
        self.manifest = manifest
        self._records = records
        self._pairs = {pid: pair_from_dict(r["pair"], r.get("refined")) for pid, r in records.items()}
        self._variants: dict[str, list[PreferencePair]] = {}

    @property
    def ids(self) -> list[str]:
        return list(self._records)

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def report(self) -> dict:
        return self.manifest["report"]

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, pair_id) -> bool:
        return pair_id in self._records

    def __iter__(self):
        return iter(self._records)

    def _get(self, pair_id: str) -> dict:
        try:
            return self._records[pair_id]
        except KeyError:
            raise KeyError(f"pair '{pair_id}' is not in the pool at {self.directory} "
                           f"({len(self)} base pairs)") from None

    def record(self, pair_id: str) -> dict:
        return self._get(pair_id)

    def pair(self, pair_id: str) -> PreferencePair:
        """The base pair (after semantic refinement, when the pool was built from refined pairs)."""
        self._get(pair_id)
        return self._pairs[pair_id]

    def pairs(self) -> list[PreferencePair]:
        return list(self._pairs.values())

    def variants(self, pair_id: str) -> list[PreferencePair]:
        """The pair's variants that passed the filter, in (chosen i, rejected j) order ([] for an unknown id)."""
        if pair_id not in self._records:
            return []
        if pair_id not in self._variants:
            record = self._records[pair_id]
            self._variants[pair_id] = [make_variant(self._pairs[pair_id], record, t) for t in record["variants"]]
        return self._variants[pair_id]

    def sizes(self, pair_ids=None) -> np.ndarray:
        """Number of variants for each id in `pair_ids` (default: every base pair, in pool order); 0 if unknown."""
        ids = self.ids if pair_ids is None else pair_ids
        return np.array([len(self._records[pid]["variants"]) if pid in self._records else 0 for pid in ids],
                        dtype=np.int64)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of the pool in `directory`, checked: a finished build of this format whose part files exist."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        hint = (" (a build started here but has not finished: run the same `marsrm augment` command again "
                "to resume it)" if (directory / "cache").is_dir() else "")
        raise PoolError(f"{directory}: no pool manifest.json{hint}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise PoolError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for shard in manifest["shards"]:
        if not (directory / shard).is_file():
            raise PoolError(f"{directory / shard}: listed in {manifest_path} but missing; rebuild the pool")
    return manifest


def scan_records(directory: str | os.PathLike, manifest: dict):
    """Every record of the pool, streamed: yields (shard number, byte offset of its line, record), in file order.

    Holds one record at a time. An id written twice is yielded twice; readers keep the last (as `open_pool` does).
    """
    for number, shard in enumerate(manifest["shards"]):
        with open(Path(directory) / shard, "rb") as handle:
            offset = 0
            for line in handle:
                yield number, offset, json.loads(line)
                offset += len(line)


# What a pool loaded whole takes in memory, measured with tracemalloc (docs/RELIABILITY.md, "Memory"): the parsed
# records per byte of part file, and each variant the loop builds from them (a variant with a paraphrased prompt
# also copies the prompt's messages).
RECORD_BYTES_PER_FILE_BYTE = 2.1
VARIANT_BYTES = {"responses": 430, "all": 1150}


def estimated_memory(directory: str | os.PathLike, manifest: dict) -> dict:
    """Bytes the pool takes loaded whole (`open_pool` + every variant built), from file sizes and the manifest.

    Returns {"bytes", "file_bytes", "variants"}; reads no record.
    """
    file_bytes = sum((Path(directory) / shard).stat().st_size for shard in manifest["shards"])
    variants = int(manifest["report"]["variants"])
    per_variant = VARIANT_BYTES.get(manifest.get("targets"), VARIANT_BYTES["all"])
    return {"bytes": int(RECORD_BYTES_PER_FILE_BYTE * file_bytes + per_variant * variants), "file_bytes": file_bytes,
            "variants": variants}


def is_pool_directory(directory: str | os.PathLike) -> bool:
    """True for a directory a pool build wrote to: a finished one (its manifest) or a started one (the config.yaml
    that `marsrm augment` writes before building, or the paraphrase cache)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT:
            return True
    except (OSError, ValueError):
        pass
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
        if isinstance(config, dict) and "paraphraser" in config:
            return True
    except (OSError, yaml.YAMLError):
        pass
    return any((directory / "cache").glob("*/settings.json"))


def check_pool_output(directory: str | os.PathLike) -> None:
    """Refuse (PoolError naming it) to build into `directory` when it holds anything but a pool: a build writes
    config.yaml, manifest.json and cache/ there and deletes older build folders. Missing, empty, or holding only
    the `atomic_write` temporaries of a build just started by another process, it is accepted."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise PoolError(f"setting 'output': {directory} is a file, not a pool directory; choose another --output")
    held = sorted(p.name for p in directory.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if held and not is_pool_directory(directory):
        shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
        raise PoolError(f"setting 'output': {directory} holds files that are not a pool ({shown}); choose a new or "
                        "empty --output, or the directory of an earlier `marsrm augment`")


def _is_build_folder(path: Path) -> bool:
    """A `pool-<build>` folder of part files, as step 4 of `build_pool` writes it (and nothing a user made)."""
    return (path.is_dir() and re.fullmatch(r"pool-[0-9a-f]{12}", path.name) is not None
            and all(re.fullmatch(r"\.?part-\d{5}\.jsonl(\..+\.tmp)?", p.name) for p in path.iterdir()))


def open_pool(directory: str | os.PathLike) -> Pool:
    """Load the pool that `build_pool` (or `marsrm augment`) wrote to `directory`, every record in memory."""
    manifest = read_manifest(directory)
    records: dict[str, dict] = {}
    for _, _, record in scan_records(directory, manifest):
        records[record["pair"]["id"]] = record
    return Pool(directory, manifest, records)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Text:
    """One text to paraphrase, cut into sentence chunks; `chunks` hold (chunk, separator after it)."""

    text: str
    chunks: list

    def keys(self, n: int, seed: int) -> list[str | None]:
        return [entry_key("paraphrase", c, "", n, seed) if c.strip() else None for c, _ in self.chunks]


def _sources(pair: PreferencePair, targets: str) -> dict:
    turn = last_user_turn(pair.prompt)
    prompt = pair.prompt[turn]["content"] if targets == "all" and turn is not None else None
    return {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected}


def _assemble(item: _Text, store: ParaphraseStore, n: int, seed: int, settings: FilterSettings) -> list[str]:
    """The n paraphrases of a text from its chunks' cached outputs (a failing chunk of a long text keeps its
    source, so one bad sentence does not sink a long response)."""
    keys = item.keys(n, seed)
    out = []
    for k in range(n):
        parts = []
        for (chunk, _), key in zip(item.chunks, keys, strict=True):
            text = chunk if key is None else store.get(key)["outputs"][k]
            failed = key is not None and cheap_verdict(chunk, text, settings) not in (None, "identical")
            if failed and len(item.chunks) > 1:
                text = chunk
            parts.append(text)
        out.append(join_segments(parts, [sep for _, sep in item.chunks]))
    return out


def build_pool(pairs, paraphraser: Paraphraser, directory: str | os.PathLike, n: int = 5, *, seed: int = 0,
               targets: str = "all", chunk_words: int = 30, label_filter: FilterSettings | None = None, embed=None,
               fallback: str = "drop", cache_dir: str | os.PathLike | None = None, flush_every: int = 32,
               progress: bool = True, echo=print, extra: dict | None = None) -> Pool:
    """Build (or finish, or reuse) the pool of `pairs` in `directory`; returns it opened.

    paraphraser: any `Paraphraser`; its `settings()` key the cache, so a changed setting computes new
    paraphrases and an unchanged one reuses them. embed(texts) -> (m, d) array: the embedding for the
    filter's cosine (None only with label_filter.min_cosine == 0). flush_every: texts per cache shard (the work a
    kill can lose). extra: more entries for the manifest (e.g. the refinement report).
    """
    started = time.perf_counter()
    settings = label_filter or FilterSettings()
    settings.validate()
    if n < 1:
        raise PoolError(f"setting 'n': must be at least 1 (got {n})")
    if targets not in TARGETS:
        raise PoolError(f"setting 'targets': '{targets}' (choose {', '.join(TARGETS)})")
    if fallback not in FALLBACKS:
        raise PoolError(f"setting 'fallback': '{fallback}' (choose {', '.join(FALLBACKS)})")
    pairs = list(pairs)
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise PoolError(f"pair ids must be unique to key the pool; repeated: {', '.join(dupes)}")
    directory = Path(directory)
    paraphraser.check()  # an unreachable endpoint stops here, before any work
    store = ParaphraseStore(Path(cache_dir) if cache_dir else directory / "cache", paraphraser.settings())

    # 1. Every distinct text, cut into chunks; the chunks missing from the cache are the work.
    items: dict[str, _Text] = {}
    for pair in pairs:
        for text in _sources(pair, targets).values():
            if text is not None and text not in items:
                items[text] = _Text(text, split_segments(text, chunk_words))
    chunks = {}
    for item in items.values():
        for (chunk, _), key in zip(item.chunks, item.keys(n, seed), strict=True):
            if key is not None:
                chunks.setdefault(key, chunk)
    missing = [k for k in chunks if k not in store]
    missing.sort(key=lambda k: (-word_count(chunks[k]), k))  # long first: batches of similar length, honest ETA
    reused = len(chunks) - len(missing)
    echo(f"pool: {len(pairs)} pairs, {len(items)} distinct texts in {len(chunks)} chunks; "
         f"{reused} cached, {len(missing)} to paraphrase with '{paraphraser.kind}' (n={n}, seed={seed})")

    # 2. Paraphrase what is missing, a cache shard every `flush_every` chunks.
    tokens_before = paraphraser.tokens
    _paraphrase_missing(paraphraser, store, [(k, chunks[k]) for k in missing], n, seed, flush_every, progress)
    generated = paraphraser.tokens - tokens_before

    # 3. Assemble, judge, cross.
    paraphrases = {text: _assemble(item, store, n, seed, settings) for text, item in items.items()}
    verdicts = {}
    for field in FIELDS:
        texts = sorted({s[field] for s in (_sources(p, targets) for p in pairs) if s[field] is not None})
        if texts:
            reasons, cosines = judge(texts, [paraphrases[t] for t in texts], settings, embed)
            verdicts.update({(field, t): (r, c) for t, r, c in zip(texts, reasons, cosines, strict=True)})
    records, counts = [], {f: count_reasons([]) for f in FIELDS}
    for pair in pairs:
        record = {"pair": pair_to_dict(pair), "source_hash": source_hash(pair), "paraphrases": {}, "variants": []}
        if pair.meta.get("refined"):
            record["refined"] = pair.meta["refined"]
        oks = {}
        for field, text in _sources(pair, targets).items():
            if text is None:
                record["paraphrases"][field], oks[field] = None, None
                continue
            reasons, cosines = verdicts[(field, text)]
            record["paraphrases"][field] = {"source": text, "texts": paraphrases[text], "verdicts": reasons,
                                            "cosines": cosines}
            oks[field] = [r is None for r in reasons]
            for key, value in count_reasons(reasons).items():
                counts[field][key] += value
        record["variants"] = [list(t) for t in cross(n, oks["prompt"], oks["chosen"], oks["rejected"], fallback)]
        records.append(record)

    # 4. Shards of pool records, then the manifest (the commit point), then clean away older builds.
    build = stable_hash(paraphraser.settings(), n, seed, targets, chunk_words, settings.to_dict(), fallback,
                        [pair_to_dict(p) for p in pairs])[:12]
    folder = f"pool-{build}"
    shards = []
    for number, start in enumerate(range(0, len(records), SHARD_PAIRS)):
        name = f"{folder}/part-{number:05d}.jsonl"
        atomic_write_text(directory / name, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                    for r in records[start:start + SHARD_PAIRS]))
        shards.append(name)
    total = {key: sum(c[key] for c in counts.values()) for key in counts["chosen"]}
    sizes = [len(r["variants"]) for r in records] or [0]
    seconds = time.perf_counter() - started
    report = {"pairs": len(pairs), "texts": len(items), "chunks": len(chunks), "chunks_cached": reused,
              "chunks_computed": len(missing), "generated_tokens": generated, "seconds": round(seconds, 2),
              "tokens_per_second": round(generated / seconds, 2) if seconds > 0 else None,
              "filter": {"total": total, **{f: counts[f] for f in FIELDS if counts[f] != count_reasons([])}},
              "variants": int(sum(sizes)),
              "variants_per_pair": {"min": min(sizes), "mean": round(float(np.mean(sizes)), 3), "max": max(sizes)},
              "pairs_without_variants": int(sum(s == 0 for s in sizes))}
    if hasattr(paraphraser, "request_report"):  # HTTP backends: requests, retries by cause, failures
        report["requests"] = paraphraser.request_report()
    manifest = {"format": FORMAT, "n": n, "seed": seed, "targets": targets, "chunk_words": chunk_words,
                "fallback": fallback, "filter": settings.to_dict(), "paraphraser": paraphraser.settings(),
                "cache": os.path.relpath(store.directory, directory), "shards": shards, "report": report,
                **(extra or {})}
    atomic_write_json(directory / "manifest.json", manifest)
    for old in directory.glob("pool-*"):
        if old.name != folder and _is_build_folder(old):
            shutil.rmtree(old, ignore_errors=True)
    echo(filter_summary(report))
    return open_pool(directory)


def _paraphrase_missing(paraphraser, store, work, n, seed, flush_every, progress) -> None:
    """Paraphrase `work` [(key, chunk)], saving a cache shard every `flush_every` chunks and, when the build stops
    (the backend fails for good, or Ctrl-C), what finished of the current batch before the error propagates.

    A backend whose every output is a request of its own (`separate_requests`: each may be paid for) and is batch
    invariant keeps every finished output, also of a text whose other outputs are not done: stored alone
    (`_output_key`), it is not requested again.
    """
    if not work:
        return
    per_output = getattr(paraphraser, "separate_requests", False) and paraphraser.batch_invariant
    bar = tqdm(total=sum(word_count(c) for _, c in work), unit="word", unit_scale=True, desc="paraphrasing",
               disable=not progress, dynamic_ncols=True)
    started, tokens0, done_chunks = time.perf_counter(), paraphraser.tokens, 0
    try:
        for start in range(0, len(work), flush_every):
            batch = work[start:start + flush_every]
            finished, outputs = [], []  # records of whole texts; of single outputs (`_complete_outputs`)

            def on_done(index, texts, batch=batch, finished=finished):
                nonlocal done_chunks
                key, chunk = batch[index]
                finished.append({"key": key, "kind": "paraphrase", "n": n, "seed": seed, "source": chunk,
                                 "outputs": list(texts)})
                done_chunks += 1
                bar.update(word_count(chunk))
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"{done_chunks}/{len(work)} texts, "
                                    f"{(paraphraser.tokens - tokens0) / max(elapsed, 1e-9):.1f} tok/s", refresh=False)

            try:
                if per_output:
                    _complete_outputs(paraphraser, store, batch, n, seed, on_done, outputs)
                else:
                    paraphraser.paraphrase([chunk for _, chunk in batch], n, seed, on_done=on_done)
            except BaseException as err:
                # Keep what finished; the next run starts after it. A backend whose outputs depend on the batch
                # keeps whole batches only, so that a resumed build forms the same batches as an uninterrupted one.
                if paraphraser.batch_invariant:
                    whole = {record["key"] for record in finished}
                    store.put(finished + [record for record in outputs if record["text_key"] not in whole])
                if isinstance(err, BuildStopped):
                    saved = sum(key in store for key, _ in work)
                    raise BuildStopped(f"{err}. {saved} paraphrased texts are saved in {store.directory}; run the "
                                       "same command again to resume") from None
                raise
            store.put(finished)
    finally:
        bar.close()


def _output_key(key: str, index: int) -> str:
    """The cache key of output `index` alone of the text whose n outputs are keyed `key`."""
    return stable_hash("output", key, int(index))[:32]


def _complete_outputs(paraphraser, store, batch, n, seed, on_done, outputs: list) -> None:
    """The n outputs of each text of `batch` [(key, chunk)] as single `complete` tasks (those of
    `Paraphraser.paraphrase`), less the outputs an earlier, stopped build stored alone; `on_done(row, texts)` once a
    text's n outputs are there, and each output's cache record appended to `outputs` as it finishes."""
    rows, tasks, places = [], [], []
    for row, (key, chunk) in enumerate(batch):
        stored = [store.get(_output_key(key, k)) for k in range(n)]
        rows.append([record["outputs"][0] if record else None for record in stored])
        for k in (k for k in range(n) if stored[k] is None):
            tasks.append(Task(chunk, derive_seed(seed, chunk, k)))
            places.append((row, k))
    for row, texts in enumerate(rows):
        if None not in texts:
            on_done(row, list(texts))

    def done(index, text):
        row, k = places[index]
        key, chunk = batch[row]
        outputs.append({"key": _output_key(key, k), "kind": "paraphrase-output", "n": n, "seed": seed, "index": k,
                        "text_key": key, "source": chunk, "outputs": [text]})
        rows[row][k] = text
        if None not in rows[row]:
            on_done(row, list(rows[row]))

    if tasks:
        paraphraser.complete(tasks, on_done=done)


def filter_summary(report: dict) -> str:
    """Lines for the terminal: variants, and the filter's counts per reason."""
    total = report["filter"]["total"]
    judged = sum(total.values())
    lines = [f"pool: {report['variants']} variants for {report['pairs']} pairs "
             f"(per pair {report['variants_per_pair']['min']}–{report['variants_per_pair']['max']}, "
             f"mean {report['variants_per_pair']['mean']}; {report['pairs_without_variants']} pairs without any)",
             f"label filter: {total['kept']}/{judged} paraphrases kept; dropped: " +
             ", ".join(f"{reason} {count}" for reason, count in total.items() if reason != "kept")]
    if report["chunks_computed"]:
        lines.append(f"paraphrased {report['chunks_computed']} chunks ({report['chunks_cached']} from the cache), "
                     f"{report['generated_tokens']} tokens in {report['seconds']:.1f} s "
                     f"({report['tokens_per_second']} tok/s)")
    return "\n".join(lines)
