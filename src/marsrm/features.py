"""Pooled embeddings from a frozen backbone, and the on-disk cache that makes `head` mode cheap.

The cache lives under `$MARSRM_CACHE` (default `~/.cache/marsrm`)/embeddings/<key>/, where the key
hashes the backbone's identity, `max_length`, the pooling and the compute dtype. Each text is keyed by
the SHA-256 of its exact model input. Vectors are stored in shards: `shard-<id>.npy` (float32, n × d,
memory-mapped when read) and `shard-<id>.keys.npy` (the n text hashes). The keys file is renamed into
place last, so a shard is visible only once complete; two processes filling the same cache write
different shards, and a text both computed is simply stored twice with the same vector.
Only finite vectors are stored (`put` refuses others), and a stored vector that reads back non-finite (a shard
written by an older version, or damaged on disk) is never served: its shard is retired and the text recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from marsrm.io import atomic_write, atomic_write_json
from marsrm.runtime import (backbone_identity, check_no_pickle, default_device, load_tokenizer, loading,
                            resolve_backbone, resolve_dtype)

POOLINGS = ("mean", "cls", "last")
TOKENIZE_CHUNK = 1024  # texts tokenised at once by `Encoder.encode`


def cache_root() -> Path:
    return Path(os.environ.get("MARSRM_CACHE", Path.home() / ".cache" / "marsrm"))


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class EmbeddingCache:
    """Text-hash → vector store for one (backbone, max_length, pooling, dtype); safe for concurrent writers."""

    def __init__(self, directory: str | os.PathLike, description: dict | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if description is not None and not (self.directory / "key.json").exists():
            atomic_write_json(self.directory / "key.json", description)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._names: list[str] = []
        self._seen: set[str] = set()

    def refresh(self) -> None:
        """Pick up shards written since the last look (by this or another process)."""
        for keys_path in sorted(self.directory.glob("shard-*.keys.npy")):
            name = keys_path.name[: -len(".keys.npy")]
            if name in self._seen:
                continue
            try:
                keys = np.load(keys_path)
                vectors = np.load(self.directory / f"{name}.npy", mmap_mode="r")
            except FileNotFoundError:  # retired by another process since the listing
                continue
            shard = len(self._shards)
            self._shards.append(vectors)
            self._names.append(name)
            self._seen.add(name)
            for row, key in enumerate(keys):
                self._index.setdefault(key.tobytes(), (shard, row))

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, keys: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """(found mask, indices into `keys` that are missing)."""
        self.refresh()
        found = np.array([k in self._index for k in keys], dtype=bool)
        return found, [i for i, ok in enumerate(found) if not ok]

    def retire(self, keys: list[bytes]) -> None:
        """Delete every shard that serves one of `keys` (keys file first: that hides a shard from every reader)
        and index the rest again, so those keys read from another shard or are missing."""
        for name in sorted({self._names[self._index[k][0]] for k in keys if k in self._index}):
            for suffix in (".keys.npy", ".npy"):
                (self.directory / f"{name}{suffix}").unlink(missing_ok=True)
        self._index, self._shards, self._names, self._seen = {}, [], [], set()
        self.refresh()

    def get(self, keys: list[bytes]) -> np.ndarray:
        rows = [self._shards[s][r] for s, r in (self._index[k] for k in keys)]
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)

    def put(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """Store `vectors` (len(keys), d) under `keys` as one new shard; ValueError (nothing written) if any value is
        not finite: every later run on those texts would read it back."""
        if len(keys) == 0:
            return
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"embedding cache: {vectors.shape} vectors for {len(keys)} keys")
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        if bad:
            raise ValueError(f"embedding cache {self.directory}: {bad} of {len(keys)} vectors are not finite (NaN or "
                             "inf); nothing stored")
        name = f"shard-{uuid.uuid4().hex}"
        # Vectors first, keys last: the keys file is what makes a shard visible to readers.
        atomic_write(self.directory / f"{name}.npy", lambda tmp: _save_npy(tmp, vectors))
        atomic_write(self.directory / f"{name}.keys.npy", lambda tmp: _save_npy(tmp, _keys_array(keys)))


def _keys_array(keys: list[bytes]) -> np.ndarray:
    # uint8 rows, not numpy's "S16": that type drops trailing zero bytes and would corrupt keys.
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


class Encoder:
    """A frozen backbone that turns texts into pooled embeddings, through the on-disk cache.

    embed(texts) -> float32 array (len(texts), hidden_size). Texts are the full model inputs.
    """

    def __init__(self, backbone: str | None = None, *, max_length: int = 128, pooling: str = "mean",
                 dtype: str = "auto", device: str | None = None, use_cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}': choose one of {', '.join(POOLINGS)}")
        if max_length < 8:
            raise ValueError(f"max_length {max_length}: must be at least 8 tokens")
        self.backbone = resolve_backbone(backbone)
        check_no_pickle(self.backbone, allow_pickle)
        self.max_length, self.pooling = max_length, pooling
        self.device = default_device(device)
        self.dtype = resolve_dtype(dtype, self.device, "embed")
        self.trust_remote_code, self.allow_pickle = trust_remote_code, allow_pickle
        self.tokenizer = load_tokenizer(self.backbone, trust_remote_code=trust_remote_code)
        self._model = None
        self.cache = None
        if use_cache:
            description = {"backbone": backbone_identity(self.backbone), "max_length": max_length,
                           "pooling": pooling, "dtype": self.dtype}
            key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
            root = Path(cache_dir) if cache_dir else cache_root() / "embeddings"
            self.cache = EmbeddingCache(root / key, description)

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModel

            with loading(self.backbone):
                model = AutoModel.from_pretrained(self.backbone, trust_remote_code=self.trust_remote_code,
                                                  use_safetensors=not self.allow_pickle)
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embeddings for `texts`, computing (and caching) only those not cached yet."""
        texts = list(texts)
        if self.cache is None:
            return self.encode(texts, batch_size=batch_size, progress=progress)
        keys = [text_key(t) for t in texts]
        _, missing = self.cache.lookup(keys)
        if missing:
            unique = {}
            for i in missing:
                unique.setdefault(keys[i], texts[i])
            new_keys = list(unique)
            vectors = self.encode([unique[k] for k in new_keys], batch_size=batch_size, progress=progress)
            self.cache.put(new_keys, vectors)
            self.cache.refresh()
        vectors = self.cache.get(keys)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():  # stored before `put` refused such vectors, or damaged: recomputed, never served
            self.cache.retire([k for k, ok in zip(keys, finite) if not ok])
            return self.embed(texts, batch_size=batch_size, progress=progress)
        return vectors

    @torch.inference_mode()
    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Run the backbone on `texts` (no cache): length-sorted batches, dynamic padding, bf16 where native."""
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be at least 1")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # tokenised a chunk at a time and kept as int32 arrays: a fast tokenizer's output for tens of thousands of
        # texts at once (Python int lists, plus its per-text offsets and token strings) runs to hundreds of MB
        encoded = [np.asarray(ids, dtype=np.int32) for start in range(0, len(texts), TOKENIZE_CHUNK)
                   for ids in self.tokenizer(texts[start:start + TOKENIZE_CHUNK], truncation=True,
                                             max_length=self.max_length)["input_ids"]]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.full((len(texts), self.dim), np.nan, dtype=np.float32)  # a row left unwritten cannot pass as a vector
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.dtype == "bf16" else nullcontext())
        bar = tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i].tolist() for i in index]}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with autocast:
                hidden = self.model(**batch).last_hidden_state
            out[index] = pool(hidden.float(), batch["attention_mask"], self.pooling).cpu().numpy()
            bar.update(len(index))
        bar.close()
        return out


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, tokens, d) hidden states + (batch, tokens) mask → (batch, d). Right padding assumed."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    last = mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class LazyEmbed:
    """`embed(texts)` through `marsrm.features.Encoder`, loaded on first use (a fully cached run never loads it)."""

    def __init__(self, backbone: str, max_length: int = 256, dtype: str = "fp32"):
        self.backbone, self.max_length, self.dtype = backbone, max_length, dtype
        self._encoder = None

    def __call__(self, texts):
        if self._encoder is None:
            self._encoder = Encoder(self.backbone, max_length=self.max_length, dtype=self.dtype)
        return self._encoder.embed(list(texts))
