"""A run knows its data: the fingerprint in config.json, checked by --resume, evaluate and the report."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest
import torch

from arcdist import fingerprint
from arcdist.data import DeviceData, load_dataset
from arcdist.datasets import dataset_spec
from arcdist.report import ReportError, load_grid
from helpers import ROOT, cli_env, make_tiny_mnist, metric_rows, run_train, snapshot, tiny_args

MNIST_RAW = ("MNIST", "raw")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A 1-epoch run on a copy of the tiny data; returns (data copy, run folder)."""
    root = tmp_path_factory.mktemp("fp")
    data, run = root / "data", root / "run"
    shutil.copytree(tiny_data, data)
    run_train(tiny_args(data, run, 1, "--plot-every", "0"))
    return data, run


def _resume(run, data, epochs=2):
    return run_train([*tiny_args(data, run, epochs, "--plot-every", "0")[:-4], "--resume", str(run),
                      "--epochs", str(epochs)], check=False)


def test_the_fingerprint_is_of_the_decoded_data_wherever_and_however_stored(tiny_data, tmp_path):
    plain = tmp_path / "plain"
    make_tiny_mnist(plain, gz=False)  # the same images, not gzipped
    spec = dataset_spec("mnist")
    ids = []
    for d in (tiny_data, plain):
        s = load_dataset("mnist", d, download=False)
        ids.append(fingerprint.of_splits(DeviceData(s.train_x, s.train_y, spec, torch.device("cpu")),
                                         DeviceData(s.test_x, s.test_y, spec, torch.device("cpu"))))
    assert ids[0] == ids[1] and ids[0].startswith("tensors:sha256:") and len(ids[0]) == len("tensors:sha256:") + 64


def test_the_run_records_its_fingerprint(trained):
    data, run = trained
    doc = json.loads((run / "config.json").read_text())
    assert doc[fingerprint.KEY].startswith("tensors:sha256:")


def _swap_in(dst, src_root):
    """dst's MNIST files replaced by src_root's (another dataset under MNIST's names)."""
    raw = dst.joinpath(*MNIST_RAW)
    shutil.rmtree(raw)
    shutil.copytree(src_root.joinpath(*MNIST_RAW), raw)


@pytest.mark.parametrize("how", ["other-dataset", "one-changed-image"])
def test_resume_on_other_data_is_refused_in_one_line_and_nothing_changes(trained, tmp_path, how):
    data, run = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    if how == "other-dataset":
        _swap_in(other, make_tiny_mnist(tmp_path / "second", seed=7))
    else:
        path = other.joinpath(*MNIST_RAW, "train-images-idx3-ubyte.gz")
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[16 + 5 * 784 + 400] ^= 0xFF  # one pixel of image 5
        path.write_bytes(gzip.compress(bytes(raw)))
    before = snapshot(run)
    proc = _resume(run, other)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    saved = fingerprint.recorded(run)
    assert "trained on other data" in lines[0] and saved[:32] in lines[0] and "--data-dir" in lines[0]
    assert snapshot(run) == before


@pytest.mark.slow
def test_the_same_files_in_another_folder_resume(trained, tmp_path):
    data, run = trained
    copy_run, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(run, copy_run)
    shutil.copytree(data, moved)
    proc = _resume(copy_run, moved)
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in metric_rows(copy_run)] == [1, 2]


@pytest.mark.slow
def test_a_run_from_before_fingerprints_resumes_with_one_warning_and_records_it(trained, tmp_path):
    data, run = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    doc = json.loads((old / "config.json").read_text())
    recorded = doc.pop(fingerprint.KEY)
    (old / "config.json").write_text(json.dumps(doc))
    proc = _resume(old, data)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "before runs recorded their data" in line]
    assert len(warnings) == 1
    assert fingerprint.recorded(old) == recorded


@pytest.mark.slow
def test_evaluate_refuses_other_data(trained, tmp_path):
    data, run = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    _swap_in(other, make_tiny_mnist(tmp_path / "second", seed=7))
    before = snapshot(run)
    proc = subprocess.run([sys.executable, "-m", "arcdist.evaluation.evaluate", str(run), "--data-dir", str(other)], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("arcdist evaluate: error: arcdist evaluate: ") and "other data" in proc.stderr
    assert snapshot(run) == before


@pytest.mark.slow
def test_the_report_refuses_seeds_trained_on_different_data(trained, tmp_path):
    _, run = trained
    grid = tmp_path / "grid"
    runs = [grid / "V2-s0", grid / "V2-s1"]
    for r in runs:
        shutil.copytree(run, r)
    doc = json.loads((runs[1] / "config.json").read_text())
    doc[fingerprint.KEY] = "tensors:sha256:" + "0" * 64
    (runs[1] / "config.json").write_text(json.dumps(doc))
    jobs = [dict(index=i, variant="V2", seed=i, dataset="mnist", run_dir=str(r), status="finished")
            for i, r in enumerate(runs)]
    (grid / "grid.json").write_text(json.dumps(dict(grid_id="g", jobs=jobs)))
    with pytest.raises(ReportError, match="trained on different data"):
        load_grid(grid)
