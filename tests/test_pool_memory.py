"""The pool under a memory budget: a pool estimated over `pool_memory` is read from disk, with the same results
(docs/RELIABILITY.md, "Memory")."""
import argparse
import dataclasses
import gc
import json
import tracemalloc

import numpy as np
import pytest

from marsrm import loop
from marsrm.commands.compare import CompareConfig
from marsrm.config import ConfigError, build_parser, resolve
from marsrm.data import PreferencePair
from marsrm.commands.run import RunConfig, config_fingerprint, run
from marsrm.loop import BasePool, StreamedBasePool, open_base_pool, parse_size
from marsrm.commands.augment import AugmentConfig, augment
from marsrm.pool import open_pool
from marsrm.pool.build import FORMAT, SHARD_PAIRS, estimated_memory, pair_to_dict, read_manifest, source_hash

DATA = {"train_size": 24, "eval_size": 16, "val_size": 0, "seed": 0}


# --- the setting ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("2GiB", 2 * 2**30), ("500 MB", 500 * 10**6), ("1.5kB", 1500), ("0", 0),
                                        ("1048576", 2**20), ("64mib", 64 * 2**20)])
def test_sizes_are_read_in_decimal_and_binary_units(text, size):
    assert parse_size(text, "pool_memory") == size


@pytest.mark.parametrize("value", ["lots", "-1GiB", "2 GB/s", "", "2G", "1e9"])
def test_a_budget_that_is_not_a_size_is_refused_naming_the_setting(value):
    with pytest.raises(ConfigError, match="'pool_memory'"):
        RunConfig(pool_memory=value).validate()
    with pytest.raises(ConfigError, match="'pool_memory'"):
        CompareConfig(pool_memory=value).validate()
    parser = build_parser(RunConfig, argparse.ArgumentParser())
    with pytest.raises(ConfigError, match="'pool_memory'"):
        resolve(RunConfig, parser.parse_args([f"--pool-memory={value}"]))


def test_the_budget_does_not_enter_the_fingerprint_a_resume_checks():
    assert "pool_memory" not in config_fingerprint(RunConfig())


# --- a synthetic pool on disk: several part files, many variants -----------------------------------------------

def synthetic_pool(directory, pairs: int, n: int = 3, seed: int = 0):
    """A pool in the documented on-disk format (responses paraphrased, every variant kept but (0, 0)), and its base
    pairs; written without paraphrasing."""
    rng = np.random.default_rng(seed)
    words = np.array(["water", "basil", "window", "leaves", "sunny", "soil", "dry", "flowers", "keep", "plant",
                      "weekly", "light", "grow", "pinch", "pot", "indoors", "the", "a", "and", "it"])

    def text(length):
        return " ".join(rng.choice(words, length))

    base, records = [], []
    for k in range(pairs):
        pair = PreferencePair(id=f"synthetic:{k + 1}", prompt=({"role": "user", "content": text(12)},),
                              chosen=text(40), rejected=text(30))
        paraphrases = {"prompt": None}
        for field in ("chosen", "rejected"):
            paraphrases[field] = {"source": getattr(pair, field), "texts": [text(35) for _ in range(n)],
                                  "verdicts": [None] * n, "cosines": [0.9] * n}
        variants = [[-1, i, j] for i in range(n) for j in range(n) if (i, j) != (0, 0)]
        records.append({"pair": pair_to_dict(pair), "source_hash": source_hash(pair), "paraphrases": paraphrases,
                        "variants": variants})
        base.append(pair)
    shards = []
    for number, start in enumerate(range(0, pairs, SHARD_PAIRS)):
        shards.append(f"pool-synthetic/part-{number:05d}.jsonl")
        (directory / "pool-synthetic").mkdir(parents=True, exist_ok=True)
        (directory / shards[-1]).write_text("".join(json.dumps(r) + "\n" for r in records[start:start + SHARD_PAIRS]))
    variants = sum(len(r["variants"]) for r in records)
    manifest = {"format": FORMAT, "n": n, "seed": seed, "targets": "responses", "shards": shards,
                "report": {"pairs": pairs, "variants": variants}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return base


def test_a_streamed_pool_holds_the_variants_of_the_loaded_one_in_the_same_order(tmp_path):
    base = synthetic_pool(tmp_path, 1200)  # three part files
    base = base[::-1][:1000] + [PreferencePair(id="not-in-pool", prompt=(), chosen="a", rejected="b")]
    loaded = BasePool(base, open_pool(tmp_path).variants)
    streamed = StreamedBasePool(tmp_path, base)
    assert np.array_equal(loaded.sizes, streamed.sizes) and loaded.source_hashes == streamed.source_hashes
    assert streamed.sizes[-1] == 0
    rng = np.random.default_rng(0)
    pair_index = rng.choice(np.flatnonzero(loaded.sizes), 500)  # repeats: a pair (and a variant) taken twice
    variant_index = rng.integers(0, loaded.sizes[pair_index])
    assert streamed.take(pair_index, variant_index) == loaded.take(pair_index, variant_index)
    assert list(streamed.chunks(97)) == list(loaded.chunks(97))
    assert streamed.flat() == loaded.flat()
    with pytest.raises(IndexError, match="no variants"):
        streamed.take(np.array([len(base) - 1]), np.array([0]))


def test_a_pool_over_the_budget_is_read_from_disk_and_holds_a_small_fraction_of_the_loaded_pool(tmp_path):
    base = synthetic_pool(tmp_path, 2000)
    config = RunConfig(pool=str(tmp_path))
    figures = {"file_bytes": sum(p.stat().st_size for p in tmp_path.glob("pool-synthetic/*.jsonl"))}
    for name, budget in (("loaded", "1GiB"), ("streamed", "1MiB")):
        lines = []
        gc.collect()
        tracemalloc.start()
        pool = open_base_pool(dataclasses.replace(config, pool_memory=budget), base, echo=lines.append)
        figures[f"{name}_bytes"], figures[f"{name}_open_peak_bytes"] = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pool.take(np.arange(0, 2000, 4), np.full(500, 3))  # a round's sample: 500 variants from 500 pairs
        figures[f"{name}_take_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        figures[f"{name}_line"] = lines[0]
        assert isinstance(pool, StreamedBasePool if name == "streamed" else BasePool)
        del pool
    print(figures)
    assert "loading it into memory" in figures["loaded_line"]
    assert "over pool_memory 1MiB: reading variants from disk" in figures["streamed_line"]
    # Held once open: ~100 bytes a pair against ~5 kB (the variants and the texts they use); while opening, the
    # streamed pass parses one record at a time where loading holds every record.
    assert figures["streamed_bytes"] < figures["loaded_bytes"] / 20
    assert figures["streamed_open_peak_bytes"] < figures["loaded_open_peak_bytes"] / 20
    assert figures["streamed_take_peak_bytes"] < figures["loaded_bytes"] / 5


# --- a run on a lexical pool: the same rounds either way -------------------------------------------------------

@pytest.fixture(scope="module")
def lexical_pool(tmp_path_factory, hh_dir):
    """A `marsrm augment --paraphraser lexical` pool for 24 HH-RLHF training pairs (prompt and responses, n = 3),
    and one embedding cache for the runs of this module."""
    root = tmp_path_factory.mktemp("pool-memory")
    data = str(hh_dir / "helpful-online-test.jsonl.gz")
    augment(AugmentConfig(data=data, **DATA, output=str(root / "pool"), paraphraser="lexical", n=3, min_cosine=0.0,
                          progress=False), echo=lambda *_: None)
    return {"data": data, "pool": str(root / "pool"), "cache": str(root / "cache")}


def test_the_estimate_that_chooses_the_path_is_near_the_measured_size_of_the_loaded_pool(lexical_pool):
    from marsrm.pipeline import load_split

    base = load_split(RunConfig(data=lexical_pool["data"], **DATA), echo=lambda *_: None)[0].train
    estimate = estimated_memory(lexical_pool["pool"], read_manifest(lexical_pool["pool"]))
    gc.collect()
    tracemalloc.start()
    pool = BasePool(base, open_pool(lexical_pool["pool"]).variants)
    held, peak = tracemalloc.get_traced_memory()  # peak: every record parsed and every variant built
    tracemalloc.stop()
    print({"estimated_bytes": estimate["bytes"], "peak_bytes": peak, "held_bytes": held,
           "file_bytes": estimate["file_bytes"], "variants": int(pool.sizes.sum())})
    assert 0.8 < estimate["bytes"] / peak < 1.25


@pytest.mark.parametrize("strategy", ["mars", "west-of-n"])
def test_a_streamed_run_samples_and_ends_exactly_as_the_loaded_run(tmp_path, lexical_pool, monkeypatch, strategy):
    monkeypatch.setenv("MARSRM_CACHE", lexical_pool["cache"])
    monkeypatch.setattr(loop, "VARIANT_CHUNK", 50)  # west-of-n's variant margins come in several chunks
    ends = {}
    for budget in ("2GiB", "0"):
        lines = []
        config = RunConfig(data=lexical_pool["data"], **DATA, pool=lexical_pool["pool"], pool_memory=budget,
                           strategy=strategy, tau=1.0 if strategy == "mars" else None, rounds=2, budget=60,
                           max_length=64, lr=0.01, n_resamples=50, round_resamples=20, progress=False,
                           output=str(tmp_path / budget))
        results = run(config, echo=lines.append)
        rounds = [dict(np.load(tmp_path / budget / "rounds" / f"round-{r}.npz")) for r in (1, 2)]
        ends[budget] = (results, rounds, np.load(tmp_path / budget / "eval_margins.npy"), lines)
    (loaded, loaded_rounds, loaded_margins, loaded_lines), (streamed, streamed_rounds, streamed_margins, lines) = \
        ends["2GiB"], ends["0"]
    assert any("loading it into memory" in line for line in loaded_lines)
    assert any("over pool_memory 0: reading variants from disk" in line for line in lines)
    for ours, theirs in zip(streamed_rounds, loaded_rounds):
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
        assert ours["pair_index"].size == 60
    assert np.array_equal(streamed_margins, loaded_margins)
    drop = ("seconds", "pairs_per_s")
    same = [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in streamed["rounds_log"]]
    assert same == [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in loaded["rounds_log"]]
    assert streamed["eval"] == loaded["eval"]
