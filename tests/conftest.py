"""Shared fixtures (the real data folder, a tiny synthetic MNIST, the probe cache) and the suite's markers.

Helpers live in tests/helpers.py. Markers: `cluster` (a Slurm cluster or network namespaces: test_slurm.py,
test_multinode.py) and `slow` (a test that trains for more than a few seconds); the fast subset is
`python -m pytest -m "not cluster and not slow"`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REAL_DATA, make_tiny_mnist


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory) -> Path:
    """One precision-probe cache for the session (train.mixed_precision=auto), not the user's ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["ARCDIST_CACHE_DIR"] = str(path)
    os.environ["ARCDIST_STRICT_PLOTS"] = "1"  # in-process runs too: a plot that fails fails the test
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {REAL_DATA}; set ARCDIST_DATA_DIR")
    return REAL_DATA
