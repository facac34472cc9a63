"""Shared fixtures: offline hub, a private embedding cache, the shared HH-RLHF data."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own embedding cache unless it sets MARSRM_CACHE itself."""
    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def minilm_path():
    from marsrm.runtime import resolve_backbone

    return resolve_backbone(None)


@pytest.fixture(scope="session")
def hh_dir():
    if not SHARED_HH.exists():
        pytest.skip(f"HH-RLHF data not found at {SHARED_HH}")
    return SHARED_HH
