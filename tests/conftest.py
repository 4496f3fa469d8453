"""Shared fixtures: real MovieLens from ../shared/data (skipped when absent) and markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGHTNING_MF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding `ml-100k/` and `ml-latest-small/`; skips the test when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MovieLens data not found at {SHARED_DATA} (set LIGHTNING_MF_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ml100k_dir(shared_data: Path) -> Path:
    path = shared_data / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"ml-100k not found at {path}")
    return path


@pytest.fixture(scope="session")
def ml_latest_small_dir(shared_data: Path) -> Path:
    path = shared_data / "ml-latest-small"
    if not (path / "ratings.csv").is_file():
        pytest.skip(f"ml-latest-small not found at {path}")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
