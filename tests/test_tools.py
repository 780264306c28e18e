"""The analysis scripts in tools/ that the READMEs' figures come from, on synthetic runs with known answers."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, cli_env


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


error_sets = _load("error_sets")
W = np.array([[np.cos(a), np.sin(a)] for a in np.arange(10) * 2 * np.pi / 10], dtype=np.float32)
LABELS = np.arange(100) % 10


def _run(root, name: str, wrong: list[int], epoch: int = 3, labels=LABELS):
    """A run dir whose test features sit on their class's direction (norm 5), except `wrong`, put on the next."""
    target = labels.copy()
    target[wrong] = (target[wrong] + 1) % 10
    run = root / name
    (run / "features").mkdir(parents=True)
    np.savez(run / "features" / f"test-epoch-{epoch:04d}.npz", features=5 * W[target], labels=labels, W=W,
             epoch=epoch)
    return run


def test_error_sets_counts_fixed_new_and_shared(tmp_path):
    a = [_run(tmp_path, "a0", [1, 2, 3, 4]), _run(tmp_path, "a1", [2, 3, 4, 50, 51])]
    b = [_run(tmp_path, "b0", [3, 4, 7]), _run(tmp_path, "b1", [3, 60])]
    r = error_sets.compare(a, b)
    assert r["pairs"] == [dict(a="a0", b="b0", errors_a=4, errors_b=3, fixed=2, new=1),
                          dict(a="a1", b="b1", errors_a=5, errors_b=2, fixed=4, new=1)]
    assert (r["shared_a"], r["shared_b"], r["shared_both"]) == (3, 1, 1)


def test_error_sets_refuses_runs_saved_in_another_order(tmp_path):
    a = [_run(tmp_path, "a0", [1])]
    b = [_run(tmp_path, "b0", [1], labels=LABELS[::-1].copy())]
    with pytest.raises(SystemExit, match="different orders"):
        error_sets.compare(a, b)
    with pytest.raises(SystemExit, match="no saved test features for epoch 9"):
        error_sets.compare(a, a, epoch=9)


def test_error_sets_names_runs_by_their_grid_when_run_names_repeat(tmp_path):
    a, b = _run(tmp_path / "grid-a", "A10-s0", [1, 2]), _run(tmp_path / "grid-b", "A10-s0", [2])
    assert error_sets.compare([a], [b])["pairs"] == [dict(a="grid-a/A10-s0", b="grid-b/A10-s0", errors_a=2,
                                                          errors_b=1, fixed=1, new=0)]


w_drift = _load("w_drift")


def test_w_drift_measures_a_known_rotation_and_the_errors_depth(tmp_path):
    run = _run(tmp_path, "r", [5, 6], epoch=1)
    turn = np.radians(2.0)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]], dtype=np.float32)
    first = dict(np.load(run / "features" / "test-epoch-0001.npz"))
    np.savez(run / "features" / "test-epoch-0002.npz", **{**first, "W": W @ rot.T, "epoch": 2})
    (run / "summary.json").write_text('{"final_accuracy": 0.98}')
    r = w_drift.drift(run)
    assert r["epochs"] == [2]
    assert r["mean"] == pytest.approx([2.0], abs=1e-3) and r["max"] == pytest.approx([2.0], abs=1e-3)
    # classes 5 and 6 hold 9 features on their direction and 1 on the next, 36 deg on: their mean direction sits
    # psi past the nine, and the class's mean angle to it is (9 psi + 36 - psi) / 10; the other 8 classes spread 0
    psi = np.degrees(np.arctan2(np.sin(np.radians(36)), 9 + np.cos(np.radians(36))))
    assert r["spread"] == pytest.approx(2 * (9 * psi + 36 - psi) / 10 / 10, abs=1e-3)
    # W turned 2 deg: a misplaced feature is 2 deg from the predicted direction and 34 from its own, 16 past the
    # boundary; every feature is 16 or 18 deg from a boundary, none within 1
    assert r["errors"] == 2 and r["depth"] == pytest.approx(16.0, abs=1e-3) and r["near"] == 0


@pytest.mark.parametrize("tool, args, says", [
    ("image_folder.py", ["--classes", "42", "--per-class", "3,1"], "--classes: 42 not among mnist's classes"),
    ("image_folder.py", ["--per-class", "3"], "--per-class 3: expected TRAIN,TEST"),
    ("image_folder.py", ["--size", "3"], "--size 3: expected 8 pixels or more"),
    ("folder_study.py", ["--rows", "ten,NOPE"], "--rows: no row NOPE; the rows are twenty"),
    ("open_set_study.py", ["--rows", "mnist-arcface-d2-lo,NOPE"], "--rows: 'NOPE' is no DATASET-HEAD-dDIM-SPLIT row")])
def test_the_tools_refuse_bad_arguments_in_one_line_writing_nothing(tmp_path, tool, args, says):
    """An unknown class wrote an empty dataset and said "wrote 0"; a misspelt study row was skipped, then the study
    crashed: one line, exit 2, nothing written."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / tool), *(["--out"] if "study" in tool else []),
                           str(out), *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert not out.exists()
