"""Shared fixtures (the real data folder, a tiny synthetic MNIST, the probe cache) and the suite's markers.

Helpers live in tests/helpers.py. Markers: `cluster` (a Slurm cluster or network namespaces: test_slurm.py,
test_multinode.py) and `slow` (a test that trains for more than a few seconds); the fast subset is
`python -m pytest -m "not cluster and not slow"`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers import REAL_DATA, make_tiny_mnist

CLUSTER_MODULES = ("test_slurm.py::", "test_multinode.py::")  # each builds a Slurm cluster of its own
# modules whose module-scoped fixtures train runs or start a browser (3-12 s each): one worker runs each module,
# so that a fixture is built once, not once per worker
FIXTURE_MODULES = ("test_report.py::", "test_explore.py::", "test_features_3d.py::", "test_plots_wandb.py::",
                   "test_grid.py::", "test_bad_input.py::", "test_embed.py::", "test_evaluate.py::")

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist not installed: the suite runs in one process
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:
    class ClusterTestsTogether(LoadScopeScheduling):
        """`pytest -n 2`: every test is a unit of its own (as `--dist load`), except the cluster tests, which all
        go to one worker in order: two workers building the Slurm clusters at once would share their daemons'
        names and ports. Being the largest unit, they are handed out first. Each of FIXTURE_MODULES is a unit too."""

        def _split_scope(self, nodeid: str) -> str:
            if any(m in nodeid for m in CLUSTER_MODULES):
                return "cluster"
            return next((m for m in FIXTURE_MODULES if m in nodeid), nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return ClusterTestsTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory) -> Path:
    """One precision-probe cache for the session (train.mixed_precision=auto), not the user's ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["ARCDIST_CACHE_DIR"] = str(path)
    # what the launchers leave in the temporary folder (torch's elastic agent: a torchelastic_* folder per launch)
    # goes with the session's other files, not into /tmp for good
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("t"))
    tempfile.tempdir = None  # (tempfile read TMPDIR once, at its first use)
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
