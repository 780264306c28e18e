"""Classes never seen in training (`data.train_classes`, arcdist.evaluation.openset): the head has a row per seen class, no
image of another class reaches a training batch, each epoch judges the unseen classes by retrieval and
unseen_auroc, the saved features keep every class, and the plots and the explorer draw the unseen ones apart."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from arcdist.config import ConfigError
from arcdist.evaluation.openset import SeenClasses, resolve, unseen_metrics
from arcdist.evaluation.retrieval import retrieval_metrics
from arcdist.train import build_config, parse_args
from arcdist.trainer import Trainer
from helpers import PLOTS, RETRIEVAL, metric_rows, run_train, snapshot, tiny_args

DIGITS = tuple(str(d) for d in range(10))


def test_train_classes_resolve_labels_and_names_and_refuse_none_or_all():
    assert resolve((4, 0, "2", 2), DIGITS) == (0, 2, 4)  # labels or names, each once, sorted
    assert resolve(("cat",), ("cat", "dog", "emu")) == (0,)
    assert resolve((1, 2), ("1", "2", "7")) == (0, 1)  # folders named 1 and 2, not labels 1 and 2 ("2" and "7")
    assert resolve((2,), ("0", "1", "cat")) == (2,)  # a number that names no class is a label
    for wanted, words in ((("cow",), "'cow' is no class"), ((10,), "10 is no class"),
                          (tuple(range(10)), "lists 10 of the 10 classes")):
        with pytest.raises(ConfigError, match=words):
            resolve(wanted, DIGITS)


def test_unseen_metrics_equal_retrieval_of_the_unseen_and_a_brute_force_auroc():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 4  # classes 0, 1 seen (W's rows), 2, 3 unseen
    feats = torch.randn(60, 3, generator=g) + 2 * torch.eye(3)[labels % 3]
    W = torch.randn(2, 3, generator=g)
    seen = SeenClasses.of((0, 1), 4)
    got = unseen_metrics(feats, labels, W, seen)
    away = labels >= 2
    want = retrieval_metrics(feats[away], labels[away])
    assert {k: got[f"unseen_{k}"] for k in want} == want
    best = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(W, dim=1).t()
    best = best.amax(1).double()
    pos, neg = best[~away], best[away]
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
    assert got["unseen_auroc"] == pytest.approx(brute, abs=1e-12)
    length = feats.norm(dim=1).double()
    pos, neg = length[~away], length[away]
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
    assert got["unseen_auroc_norm"] == pytest.approx(brute, abs=1e-12) and brute != got["unseen_auroc"]
    rows = seen.rows(labels)
    assert rows.tolist() == [0, 1, -1, -1] * 15
    kept, kept_rows = seen.closed_set(feats, labels)
    assert kept.shape == (30, 3) and kept_rows.tolist() == [0, 1] * 15
    one = unseen_metrics(feats, labels, W, SeenClasses.of((0, 1, 2), 4))  # one unseen class: every neighbour right
    assert set(one) == {"unseen_auroc", "unseen_auroc_norm"}  # so no retrieval figure (it read 1.0 always)


def test_a_run_trains_on_the_listed_classes_and_judges_the_others_by_retrieval(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(tiny_data, out, 2, *PLOTS, *RETRIEVAL, "--set", "data.train_classes=5,6,7,8,9")
    trainer = Trainer(build_config(parse_args(args)), tmp_path / "t", Accelerator(cpu=True), no_progress=True)
    train_labels = torch.tensor(np.frombuffer(
        __import__("gzip").open(tiny_data / "MNIST/raw/train-labels-idx1-ubyte.gz").read()[8:], np.uint8).copy())
    assert len(trainer.train_data) == int((train_labels >= 5).sum())  # every image of a seen class, no other
    batches = [y for epoch in range(2) for _, y in trainer._batches(epoch, 0)]
    assert set(torch.cat(batches).tolist()) == {0, 1, 2, 3, 4}  # rows 0..4 are classes 5..9
    assert set(trainer.seen.labels[torch.cat(batches)].tolist()) == {5, 6, 7, 8, 9}
    assert len(trainer.test_data) == 101 and trainer.test_data.y.max() == 9  # the test split keeps every class

    run_train(args)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["data"]["train_classes"] == [5, 6, 7, 8, 9] and cfg["head"]["num_classes"] == 5
    rows = metric_rows(out)
    for r in rows:
        for key in ("unseen_precision_at_1", "unseen_r_precision", "unseen_mean_average_precision_at_r",
                    "unseen_auroc", "unseen_auroc_norm", "precision_at_1"):
            assert 0.0 <= r[key] <= 1.0, (key, r)
        assert 5 <= r["worst_class"] <= 9
    f = np.load(out / "features.npz")
    assert f["W"].shape == (5, 2) and f["rows"].tolist() == [5, 6, 7, 8, 9]
    assert set(np.unique(f["labels"])) == set(range(10)) and len(f["labels"]) == 101
    summary = json.loads((out / "summary.json").read_text())
    assert all(summary[k] == rows[-1][k] for k in ("unseen_auroc", "unseen_auroc_norm", "unseen_precision_at_1"))
    assert sorted(p.name for p in (out / "plots").glob("*epoch-0002.png")) == [
        "test-circle-epoch-0002.png", "test-raw-epoch-0002.png", "train-circle-epoch-0002.png",
        "train-raw-epoch-0002.png"]
    train_f = np.load(out / "features" / "train-epoch-0002.npz")
    assert set(np.unique(train_f["labels"])) == {5, 6, 7, 8, 9}  # the train sample in the dataset's labels

    from arcdist.report import build_report

    grid = tmp_path / "grid"  # the report: the open-set columns, each the run's last figure (one seed: "± n/a")
    grid.mkdir()
    (grid / "grid.json").write_text(json.dumps(dict(grid_id="g", jobs=[dict(
        index=0, variant="T0", seed=0, dataset="mnist", run_dir=str(out), status="finished")])))
    cells = build_report(grid)["variants"][0]["display"]
    assert cells["unseen AUROC"] == f"{rows[-1]['unseen_auroc']:.4f} ± n/a"
    assert cells["unseen P@1"] == f"{rows[-1]['unseen_precision_at_1']:.4f} ± n/a"
    assert "unseen AUROC" in (grid / "report" / "report.md").read_text()

    from arcdist.evaluation import verification
    from arcdist.evaluation.evaluate import evaluate

    result = evaluate(out, pixels=0, data_dir=str(tiny_data), pairs=200)  # verification among the unseen classes too, from the same features
    assert result["plain"]["images"] == int((f["labels"] >= 5).sum())  # closed-set figures of the seen classes
    away = np.flatnonzero(f["labels"] < 5)
    i, j, same = verification.make_pairs(f["labels"][away], 200, 0)
    want = verification.verify(verification.cosine_scores(f["features"], away[i], away[j]), same)
    got = result["verification_unseen"]
    assert got["pairs"] == 200 and got["same_pairs"] == 100
    assert got["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-6) and got["accuracy"] == pytest.approx(
        want["accuracy"], abs=1e-6)

    from arcdist.explore.features import _load_npz, epoch_payload

    d = _load_npz(out / "features.npz")  # the explorer: W spread to every class, the unseen listed
    assert d["W"].shape == (10, 2) and not d["W"][:5].any() and np.array_equal(d["W"][5:], f["W"])
    assert d["unseen"].tolist() == [0, 1, 2, 3, 4] and set(np.unique(d["pred"])) <= {5, 6, 7, 8, 9}
    payload = epoch_payload(d, np.arange(len(d["labels"])), None)
    seen = d["labels"] >= 5
    assert payload["unseen"] == [0, 1, 2, 3, 4]
    assert payload["acc"] == pytest.approx(float((d["pred"] == d["labels"])[seen].mean()))
    assert payload["acc"] == pytest.approx(rows[-1]["test_accuracy"])


def test_a_class_list_naming_all_or_no_class_is_refused_with_nothing_written(tiny_data, tmp_path):
    before = snapshot(tmp_path)
    for value, words in (("0,1,2,3,4,5,6,7,8,9", "lists 10 of the 10 classes"), ("cat", "'cat' is no class")):
        proc = run_train(tiny_args(tiny_data, tmp_path / "run", 1, "--set", f"data.train_classes={value}"),
                         check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert snapshot(tmp_path) == before


def test_a_folder_whose_test_split_has_classes_train_lacks_trains_on_the_others(tmp_path):
    """test/ holds a class that train/ has not: the run trains on train/'s classes and judges that one as unseen."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(("ant", "bee", "cat")):
            if split == "train" and name == "bee":
                continue
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 40, (28, 28)).astype(np.uint8)
                x[4 + 8 * c: 8 + 8 * c] = 255
                Image.fromarray(x).save(folder / f"{i}.png")
    out = tmp_path / "run"
    run_train(tiny_args(tmp_path / "data", out, 1, "--dataset", "folder", *PLOTS, "--set", "data.workers=0", batch=8))
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["data"]["classes"] == ["ant", "bee", "cat"] and cfg["data"]["train_classes"] == [0, 2]
    assert cfg["head"]["num_classes"] == 2
    row = metric_rows(out)[-1]
    assert 0.0 <= row["unseen_auroc"] <= 1.0 and "unseen_precision_at_1" not in row  # T0 runs without retrieval
    f = np.load(out / "features.npz")
    assert sorted(np.unique(f["labels"]).tolist()) == [0, 1, 2] and f["rows"].tolist() == [0, 2]
    shutil.rmtree(tmp_path / "data" / "train" / "ant")  # a listed class without training images: one line
    before = snapshot(tmp_path)
    proc = run_train(tiny_args(tmp_path / "data", tmp_path / "r2", 1, "--dataset", "folder",
                               "--set", "data.workers=0", "--set", "data.train_classes=ant,cat", batch=4), check=False)
    assert proc.returncode == 2 and "class 0 has no training images" in proc.stderr.strip(), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and snapshot(tmp_path) == before
