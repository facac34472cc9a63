import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from marsrm.features import EmbeddingCache, Encoder, pool, text_key

TEXTS = ["Human: hi\n\nAssistant: hello there", "Human: what is 2+2?\n\nAssistant: 4",
         "Human: tell me a joke\n\nAssistant: no", "a much longer text " * 30]


def test_pooling_modes():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 2]]))


def test_cache_keys_survive_trailing_zero_bytes(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [b"\x01" * 15 + b"\x00", b"\x00" * 16, b"\x02" * 16]
    cache.put(keys, np.arange(6, dtype=np.float32).reshape(3, 2))
    found, missing = cache.lookup(keys + [b"\x03" * 16])
    assert found.tolist() == [True, True, True, False] and missing == [3]
    assert cache.get(keys[::-1]).tolist() == [[4, 5], [2, 3], [0, 1]]


def test_cache_hit_equals_fresh_compute_and_second_pass_computes_nothing(tmp_path, minilm_path, monkeypatch):
    encoder = Encoder(minilm_path, max_length=32, dtype="fp32", cache_dir=tmp_path)
    first = encoder.embed(TEXTS + TEXTS[:1])  # a duplicate text is computed once
    assert first.shape == (5, 384)
    assert np.allclose(first[0], first[4])
    calls = []
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: calls.append(texts) or np.zeros((len(texts), 384)))
    second = Encoder(minilm_path, max_length=32, dtype="fp32", cache_dir=tmp_path).embed(TEXTS)
    assert np.array_equal(second, first[:4])
    assert calls == []
    plain = Encoder(minilm_path, max_length=32, dtype="fp32", use_cache=False).encode(TEXTS)
    assert np.allclose(plain, first[:4], atol=1e-5)


def test_batch_composition_does_not_change_embeddings(minilm_path):
    encoder = Encoder(minilm_path, max_length=64, dtype="fp32", use_cache=False)
    together = encoder.encode(TEXTS, batch_size=4)
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    assert np.allclose(together, alone, atol=1e-4)


def test_bf16_embeddings_stay_close_to_fp32(minilm_path):
    fp32 = Encoder(minilm_path, max_length=64, dtype="fp32", use_cache=False).encode(TEXTS)
    bf16 = Encoder(minilm_path, max_length=64, dtype="bf16", use_cache=False).encode(TEXTS)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.99


def test_cache_key_separates_settings(minilm_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path))
    a = Encoder(minilm_path, max_length=32, pooling="mean")
    b = Encoder(minilm_path, max_length=64, pooling="mean")
    c = Encoder(minilm_path, max_length=32, pooling="cls")
    assert len({a.cache.directory, b.cache.directory, c.cache.directory}) == 3


def test_invalid_settings(minilm_path):
    with pytest.raises(ValueError, match="pooling"):
        Encoder(minilm_path, pooling="max")
    with pytest.raises(ValueError, match="max_length"):
        Encoder(minilm_path, max_length=2)


WRITER = """
import sys, numpy as np
from marsrm.features import Encoder
texts = [f"text number {i} " * (1 + i % 7) for i in range(int(sys.argv[2]), int(sys.argv[3]))]
vectors = Encoder(None, max_length=32, dtype="fp32", cache_dir=sys.argv[1]).embed(texts)
np.save(sys.argv[4], vectors)
"""


def test_two_processes_fill_one_cache_consistently(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # overlapping ranges: both processes compute texts 20..39 at the same time
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(cache), lo, hi, str(tmp_path / f"{lo}.npy")], env=env)
             for lo, hi in (("0", "40"), ("20", "60"))]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    texts = [f"text number {i} " * (1 + i % 7) for i in range(60)]
    (key_dir,) = [d for d in cache.iterdir() if d.is_dir()]  # one (backbone, settings) key
    reader = EmbeddingCache(key_dir)
    reader.refresh()
    assert len(reader) == 60
    everything = reader.get([text_key(t) for t in texts])
    assert np.allclose(everything[:40], np.load(tmp_path / "0.npy"))
    assert np.allclose(everything[20:], np.load(tmp_path / "20.npy"))
    assert not list(key_dir.glob(".*tmp"))
