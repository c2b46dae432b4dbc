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


# The newest-versions lane's smoke set (``pytest -m smoke``, scripts/newest_lane.sh): one test of each thing a new
# release of a dependency can break -- an image prompt through the Generator (vision tower, static decoder with an
# ablation and a swap row) and through lmms-eval, one sweep unit of each kind, a splice, characterize.
SMOKE = (
    "test_vision_encoding.py::test_batched_window_attention_gives_transformers_features",
    "test_static_decode.py::test_per_row_ablation_and_swap_equal_generate",
    "test_wrapper_cli.py::test_lmms_eval_cli_runs_franken_qwen",
    "test_wrapper_cli.py::test_lm_eval_cli_runs_franken_qwen",
    "test_localize.py::test_vision_sweep_batched_equals_single_runs",
    "test_localize.py::test_reasoning_sweep_batched_equals_single_runs_and_resumes",
    "test_localize.py::test_attention_shift_end_to_end",
    "test_splice.py::test_all_rl_variant_is_bit_identical_to_rl",
    "test_splice.py::test_output_loads_and_generates",
    "test_characterize.py::test_energy_only_matches_full_run",
)


def pytest_collection_modifyitems(config, items):
    """Mark the smoke set; tests marked ``slow`` (the full trained-lineage build, ~8 min) run in CI (``CI=true``) or
    with FRANKENEVAL_RUN_SLOW=1; a plain local ``pytest -q`` skips them."""
    for item in items:
        if item.nodeid.split("/")[-1].split("[")[0] in SMOKE:
            item.add_marker(pytest.mark.smoke)
    if os.environ.get("FRANKENEVAL_RUN_SLOW") == "1" or os.environ.get("CI", "").lower() in ("true", "1"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI (CI=true) or with FRANKENEVAL_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are too small for threads: one is many times faster on a busy 2-core machine (use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
