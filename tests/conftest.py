"""Shared test setup: no hub downloads, and the location of the CMRBench mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every encoder in the tests is local (the packaged MiniLM or a tiny random BERT).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def mirror_dir() -> Path | None:
    """The CMRBench mirror: $CMRKIT_TEST_DATA_DIR, else ../shared/cmrbench beside the repository."""
    configured = os.environ.get("CMRKIT_TEST_DATA_DIR")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "cmrbench"
    return candidate if (candidate / "data" / "processed").is_dir() else None


@pytest.fixture(scope="session")
def cmrbench_mirror() -> Path:
    """Path of the CMRBench mirror; skips the test when it is not there."""
    path = mirror_dir()
    if path is None:
        pytest.skip("CMRBench mirror not found: set CMRKIT_TEST_DATA_DIR or place it at ../shared/cmrbench")
    return path
