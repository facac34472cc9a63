"""Export: base pairs plus sampled variants as JSON lines in TRL's preference format.

style "chat": {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]} — TRL's
conversational format with an explicit prompt (needs a tokenizer with a chat template).
style "pairs": {"prompt": HH transcript ending "\\n\\nAssistant:", "chosen": " …", "rejected": " …"} — plain text.
Each line also has "id" (the base pair's), "source" ("base" or "variant") and "variant" ("k,i,j" or null),
which TRL's RewardTrainer ignores (it keeps only its own columns).
"""
from __future__ import annotations

import json
import os

import numpy as np

from marsrm.data import pairs_to_records
from marsrm.io import atomic_write_text
from marsrm.pool.build import Pool
from marsrm.pool.paraphrase import PoolError, derive_seed

STYLES = ("chat", "pairs")


def sample_export(pool: Pool, per_pair: int | None, seed: int = 0) -> list:
    """[(base pair, its sampled variants)]: `per_pair` variants of each pair, drawn without replacement
    (seeded per pair id), in pool order; None takes every variant."""
    out = []
    for pair_id in pool.ids:
        variants = pool.variants(pair_id)
        if per_pair is not None and per_pair < len(variants):
            rng = np.random.default_rng(derive_seed(seed, "export", pair_id))
            variants = [variants[i] for i in sorted(rng.choice(len(variants), per_pair, replace=False))]
        out.append((pool.pair(pair_id), variants))
    return out


def export_trl(pool: Pool, path: str | os.PathLike, *, per_pair: int | None = 5, seed: int = 0,
               style: str = "chat") -> dict:
    """Write base pairs + sampled variants to `path` (JSON lines, atomically); returns the counts."""
    if style not in STYLES:
        raise PoolError(f"setting 'export_format': '{style}' (choose {', '.join(STYLES)})")
    if per_pair is not None and per_pair < 0:
        raise PoolError(f"setting 'export_variants': must be ≥ 0 (got {per_pair})")
    lines, bases, variants = [], 0, 0
    for base, sampled in sample_export(pool, per_pair, seed):
        for pair, record in zip([base, *sampled], pairs_to_records([base, *sampled], style), strict=True):
            variant = pair.meta.get("variant")
            record["source"] = "base" if variant is None else "variant"
            record["variant"] = None if variant is None else ",".join(map(str, variant))
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        bases += 1
        variants += len(sampled)
    atomic_write_text(path, "".join(lines))
    return {"path": str(path), "base_pairs": bases, "variants": variants, "rows": bases + variants, "style": style}
