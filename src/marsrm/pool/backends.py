"""The paraphraser backends by name: `make_paraphraser(kind, **settings)`.

It sits above the backends (local.py, remote.py, lexical.py), which sit above the interface they share
(paraphrase.py), so the imports run one way.
"""
from __future__ import annotations

from marsrm.pool.lexical import LexicalParaphraser
from marsrm.pool.local import LocalParaphraser
from marsrm.pool.paraphrase import BACKENDS, Paraphraser, PoolError
from marsrm.pool.remote import OpenAIParaphraser


def make_paraphraser(kind: str, **settings) -> Paraphraser:
    """The paraphraser named `kind` ("local", "openai", "lexical"), built from its keyword settings."""
    backends = {"local": LocalParaphraser, "openai": OpenAIParaphraser, "lexical": LexicalParaphraser}
    if kind in backends:
        return backends[kind](**settings)
    raise PoolError(f"setting 'paraphraser': unknown backend '{kind}' (choose {', '.join(BACKENDS)})")
