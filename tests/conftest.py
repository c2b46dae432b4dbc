"""Shared fixtures: the tiny lineage (written once per test session) and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_lineage(tmp_path_factory):
    """The built-in tiny random lineage (base/, in/, rl/), written once per session in a temp dir."""
    from frankeneval.miniature.lineage import write_lineage

    return write_lineage(tmp_path_factory.mktemp("lineage"), preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data folder (``../shared/data`` next to the repo, or $FRANKENEVAL_SHARED_DATA)."""
    path = Path(os.environ.get("FRANKENEVAL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data folder not found at {path} (set FRANKENEVAL_SHARED_DATA)")
    return path


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (CI has none)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the full trained-lineage build, ~8 min) run in CI (``CI=true``) or with
    FRANKENEVAL_RUN_SLOW=1; a plain local ``pytest -q`` skips them."""
    if os.environ.get("FRANKENEVAL_RUN_SLOW") == "1" or os.environ.get("CI", "").lower() in ("true", "1"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI (CI=true) or with FRANKENEVAL_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
