"""Data prepared once per node (arcdist.nodecache): a download, a folder's shape, mean/std and streamed fingerprint
are computed by one process of the node while the others wait, counted through ARCDIST_COUNT_WORK."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import ClassVar

import pytest

from arcdist.datasets import base as datasets_base
from arcdist.nodecache import COUNTER_ENV, once_per_node
from helpers import REAL_DATA, ROOT, cli_env, run_train, tiny_args

FORK = multiprocessing.get_context("fork")


def _slow_answer(key: str, out: str) -> None:
    def compute():
        time.sleep(0.3)  # long enough that the second process asks while the first computes
        return {"value": 41 + 1}
    Path(out).write_text(str(once_per_node("test", {"key": key}, compute)["value"]))


class Files(datasets_base.TorchvisionFiles):
    """A dataset of one file whose 'download' takes a while (not registered)."""
    name = "slow"
    folder = "slow"
    files: ClassVar[tuple[str, ...]] = ("a.bin",)

    def _download(self) -> None:
        time.sleep(0.3)
        (self.root / self.folder).mkdir(parents=True, exist_ok=True)
        (self.root / self.folder / "a.bin").write_bytes(b"x")


def _locate(root: str, out: str) -> None:
    datasets_base._network_reachable = lambda *a, **k: True  # (in the forked child only)
    Path(out).write_text(str(Files(root).locate()[0]))


@pytest.mark.parametrize("target", ["answer", "download"])
def test_two_processes_of_a_node_do_the_work_once(tmp_path, monkeypatch, target):
    counter = tmp_path / "count"
    monkeypatch.setenv(COUNTER_ENV, str(counter))
    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    outs = [tmp_path / f"out{i}" for i in range(2)]
    fn, arg = (_slow_answer, "k") if target == "answer" else (_locate, str(tmp_path / "data"))
    procs = [FORK.Process(target=fn, args=(arg, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(set(o.read_text() for o in outs)) == 1  # both got the same answer (or path)
    assert counter.read_text().splitlines() == (["test"] if target == "answer" else ["download slow"])


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found")
def test_two_ranks_measure_a_folder_once(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_folder", ROOT / "tools" / "image_folder.py")
    image_folder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_folder)
    folder = tmp_path / "pngs"
    image_folder.write_folder(folder, "mnist", str(REAL_DATA), 256, 64)
    counter = tmp_path / "count"
    env = cli_env(**{COUNTER_ENV: str(counter), "ARCDIST_CACHE_DIR": str(tmp_path / "cache")})
    run_train(tiny_args(folder, tmp_path / "run", 1, "--dataset", "folder", "--set", "data.stream=true",
                        "--set", "data.workers=0"), world=2, env=env)
    assert sorted(counter.read_text().splitlines()) == ["fingerprint", "folder-shape", "folder-stats"]


def test_the_memory_budget_is_per_node_divided_over_its_ranks():
    from arcdist.config import DataConfig
    from arcdist.data import streams

    cfg = DataConfig(dataset="folder", stream="auto", memory_budget_gb=1.0)
    gib = 2 ** 30
    assert [streams(cfg, int(0.6 * gib), ranks) for ranks in (1, 2, 8)] == [False, True, True]
    assert [streams(cfg, int(0.1 * gib), ranks) for ranks in (1, 8, 16)] == [False, False, True]
