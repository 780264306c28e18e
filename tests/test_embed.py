"""Using what was trained: `arcdist embed` equals the run's saved features; `arcdist export` (ONNX by onnxruntime,
TorchScript by torch.jit.load) equals embed within 1e-4 at any batch size; bad input is one line, exit 2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcdist.evaluation import embed, export
from arcdist.heads import geometry_scores, predicted_labels
from helpers import metric_rows, run_train, snapshot, tiny_args


def trained(tmp_path_factory, data, name: str, epochs: int, *extra: str):
    """A tiny T0 run (fp32, so its saved features are the eager model's) in a folder of its own."""
    out = tmp_path_factory.mktemp(name) / "run"
    run_train(tiny_args(data, out, epochs, *extra))
    return out


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A 2-epoch T0 run."""
    return trained(tmp_path_factory, tiny_data, "embed", 2, "--set", "train.keep_checkpoints=2")


@pytest.fixture(scope="module")
def image_run(tiny_data, tmp_path_factory):
    """The same with data.normalize=image: each image's own mean and std, in training, embed and export alike."""
    return trained(tmp_path_factory, tiny_data, "embed-image", 2, "--set", "train.keep_checkpoints=2",
                   "--set", "data.normalize=image")


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    """A 1-epoch T0 run on a folder of 40-px colour images: its list computes at 28 px (model.net_size), the
    image pooled inside the exported model (the matrix form: 40 is no multiple of 28)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("embed-large")
    gen = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for c in ("a", "b", "c"):
            (root / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(gen.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    root / "data" / split / c / f"{i}.png")
    run_train(tiny_args(root / "data", root / "run", 1, "--dataset", "folder", "--set", "data.workers=0",
                        batch=8))
    return root / "run"


BOTH = pytest.mark.parametrize("which", ["run", "image_run"])


@BOTH
def test_embed_of_the_test_split_equals_the_saved_features_of_each_epoch(which, request, tiny_data, tmp_path):
    run = request.getfixturevalue(which)
    for epoch in (1, 2):
        out = tmp_path / f"e{epoch}.npz"
        assert embed.main([str(run), "--out", str(out), "--data-dir", str(tiny_data), "--epoch", str(epoch),
                           "--no-progress"]) == 0
        got, saved = np.load(out), np.load(run / "features" / f"test-epoch-{epoch:04d}.npz")
        assert got["features"].dtype == np.float32 and got["features"].shape == saved["features"].shape == (101, 2)
        np.testing.assert_allclose(got["features"], saved["features"], rtol=0, atol=1e-5)
        assert np.array_equal(got["labels"], saved["labels"]) and list(got["classes"]) == [str(d) for d in range(10)]
        # the run's own predictions: the rule of its saved geometry, and the accuracy its metrics row recorded
        assert np.array_equal(got["predicted"], predicted_labels(saved["features"], dict(saved)).numpy())
        assert list(got["run_classes"]) == list(got["classes"]) and got["score"].shape == (101,)
        row = metric_rows(run)[epoch - 1]
        assert (got["predicted"] == got["labels"]).sum() == round(row["test_accuracy"] * 101)
        np.testing.assert_allclose(got["score"], geometry_scores(got["features"], dict(saved)).amax(1).numpy(),
                                   rtol=0, atol=1e-6)
    assert not np.allclose(np.load(tmp_path / "e1.npz")["features"], np.load(tmp_path / "e2.npz")["features"])


def test_embed_of_a_bf16_channels_last_run_equals_its_saved_features(tiny_data, tmp_path):
    """A run evaluated under bf16 autocast in NHWC (what `auto` picks on a CPU with fast bf16): embed computes as it
    did, so the features are the saved ones, not fp32's (which differ by about 1 % of their length)."""
    out = tmp_path / "run"
    run_train(tiny_args(tiny_data, out, 1, "--mixed-precision", "bf16", "--set", "train.channels_last=true"))
    assert embed.main([str(out), "--out", str(tmp_path / "e.npz"), "--data-dir", str(tiny_data), "--no-progress"]) == 0
    got, saved = np.load(tmp_path / "e.npz")["features"], np.load(out / "features.npz")["features"]
    np.testing.assert_allclose(got, saved, rtol=0, atol=1e-5)


def test_a_folder_embeds_a_few_files_at_a_time_to_the_saved_features(large_run, tmp_path, monkeypatch):
    """Files are decoded DECODED at a time (memory of a chunk, not of the folder): 2 at a time, the 9 test images
    of a 40-px colour folder run give its saved features and its predictions."""
    monkeypatch.setattr(embed, "DECODED", 2)
    assert embed.main([str(large_run), "--out", str(tmp_path / "e.npz"), "--no-progress"]) == 0
    got, saved = np.load(tmp_path / "e.npz"), np.load(large_run / "features.npz")
    np.testing.assert_allclose(got["features"], saved["features"], rtol=0, atol=1e-5)
    assert np.array_equal(got["labels"], saved["labels"]) and len(got["paths"]) == 9
    assert np.array_equal(got["predicted"], predicted_labels(saved["features"], dict(saved)).numpy())


def test_embed_a_folder_with_unknown_and_unlabelled_images(run, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for where in ("cats", "dogs", "."):  # two class folders the run never saw, and loose files
        (tmp_path / "imgs" / where).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / where / f"{i}.png")
    out = tmp_path / "f.npz"
    assert embed.main([str(run), "--images", str(tmp_path / "imgs"), "--out", str(out), "--no-progress"]) == 0
    f = np.load(out)
    assert f["features"].shape == (9, 2) and list(f["classes"]) == ["cats", "dogs"]
    assert list(f["labels"]) == [-1, -1, -1, 0, 0, 0, 1, 1, 1] and len(f["paths"]) == 9
    assert list(f["run_classes"]) == [str(d) for d in range(10)]  # predicted as one of the run's classes all the same
    assert f["predicted"].shape == (9,) and set(f["predicted"]) <= set(range(10))
    one = tmp_path / "one.npz"  # one image file: embedded alone, unlabelled, as in the folder
    assert embed.main([str(run), "--images", str(tmp_path / "imgs" / "dogs" / "1.png"), "--out", str(one)]) == 0
    g = np.load(one)
    assert list(g["labels"]) == [-1] and np.allclose(g["features"][0], f["features"][7], atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "subcenter", "center"])
def test_embed_predicts_as_the_run_did_for_heads_with_more_than_w(kind, request, tiny_data, tmp_path):
    """A bias (softmax), K sub-centres a class, learned centres: the head is loaded whole from the checkpoint."""
    out = tmp_path / "run"
    if kind == "subcenter":
        out = request.getfixturevalue("subcenter_run")
    else:
        run_train(tiny_args(tiny_data, out, 1, "--set", f"head.kind={kind}"))
    assert embed.main([str(out), "--out", str(tmp_path / "e.npz"), "--data-dir", str(tiny_data), "--no-progress"]) == 0
    f = np.load(tmp_path / "e.npz")
    assert (f["predicted"] == f["labels"]).sum() == round(metric_rows(out)[0]["test_accuracy"] * 101)


@pytest.fixture(scope="module")
def some_classes_run(tiny_data, tmp_path_factory):
    """A 1-epoch T0 run trained on 4 of the 10 digits (data.train_classes): its head has 4 rows."""
    return trained(tmp_path_factory, tiny_data, "embed-some", 1, "--set", "data.train_classes=[1,3,5,7]")


@pytest.fixture(scope="module")
def subcenter_run(tiny_data, tmp_path_factory):
    """A 1-epoch T0 run with sub-center ArcFace: 3 rows of W a class, the best of them scores."""
    return trained(tmp_path_factory, tiny_data, "embed-subcenter", 1, "--set", "head.kind=subcenter")


def test_embed_of_a_run_trained_on_some_classes_predicts_only_those(some_classes_run, tiny_data, tmp_path, capsys):
    """data.train_classes: the head's rows are the seen classes; a prediction is a dataset label among them, and
    the printed count is over the images of the seen classes (the run's own test accuracy), the others left out."""
    out = some_classes_run
    assert embed.main([str(out), "--out", str(tmp_path / "e.npz"), "--data-dir", str(tiny_data), "--no-progress"]) == 0
    f = np.load(tmp_path / "e.npz")
    assert set(f["predicted"]) <= {1, 3, 5, 7} and len(f["run_classes"]) == 10
    seen = np.isin(f["labels"], [1, 3, 5, 7])
    right, n = int((f["predicted"] == f["labels"]).sum()), int(seen.sum())
    assert round(right / n, 4) == round(metric_rows(out)[0]["test_accuracy"], 4)  # the run's own figure
    assert (f"predicted: {right:,} of the {n:,} images of the run's classes right ({100 * right / n:.2f} %); "
            f"{101 - n:,} images of classes it never trained on left out") in capsys.readouterr().out


@pytest.mark.parametrize("which", ["subcenter_run", "some_classes_run"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_scores_predict_as_embed_does(which, request, tiny_data, tmp_path, fmt):
    """--scores: a second output whose argmax is embed's `predicted` and whose max is its `score`, at batch sizes 1
    and 7 (sub-centres taken per class without fixing the batch); a class the run never trained on scores -inf."""
    from arcdist.data import load_dataset

    run = request.getfixturevalue(which)
    path = tmp_path / f"model.{fmt}"
    assert export.main([str(run), "--format", fmt, "--out", str(path), "--scores"]) == 0
    assert embed.main([str(run), "--out", str(tmp_path / "e.npz"), "--data-dir", str(tiny_data), "--no-progress"]) == 0
    want = np.load(tmp_path / "e.npz")
    images = load_dataset("mnist", tiny_data, download=False).test_x.float() / 255
    for n in (1, 7):
        x = images[:n]
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            features, scores = session.run(["features", "scores"], {"images": x.numpy()})
        else:
            with torch.no_grad():
                features, scores = (t.numpy() for t in torch.jit.load(str(path))(x))
        assert scores.shape == (n, 10)
        np.testing.assert_allclose(features, want["features"][:n], rtol=0, atol=1e-4)
        assert np.array_equal(scores.argmax(1), want["predicted"][:n])
        np.testing.assert_allclose(scores.max(1), want["score"][:n], rtol=0, atol=1e-4)
        unseen = [c for c in range(10) if c not in (1, 3, 5, 7)] if which == "some_classes_run" else []
        assert np.isneginf(scores[:, unseen]).all() and np.isfinite(np.delete(scores, unseen, axis=1)).all()


@pytest.mark.parametrize("which", ["run", "image_run", "large_run"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_model_equals_embed_at_any_batch_size(which, request, tmp_path, fmt):
    run = request.getfixturevalue(which)
    path = tmp_path / f"model.{fmt}"
    assert export.main([str(run), "--format", fmt, "--out", str(path)]) == 0
    cfg, model, _ = embed.load_embedder(run)
    assert model.per_image == (which != "run")
    shape = (3, 40, 28) if which == "large_run" else (1, 28, 0)
    assert (cfg.model.in_channels, cfg.model.image_size, cfg.model.net_size) == shape
    for n in (1, 7, 64):
        x = torch.rand(n, *shape[:1], shape[1], shape[1])
        with torch.no_grad():
            want = model(x).numpy()
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(["features"], {"images": x.numpy()})[0]
        else:
            got = torch.jit.load(str(path))(x).detach().numpy()
        assert got.shape == (n, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", ["no checkpoint", "no images", "missing format package", "no such epoch",
                                  "a file that is not an image"])
def test_bad_input_is_one_line_exit_2_nothing_written(run, tmp_path, monkeypatch, capsys, case):
    import shutil

    target = tmp_path / "out.npz"
    if case == "no checkpoint":
        bare = tmp_path / "bare"
        bare.mkdir()
        shutil.copy(run / "config.json", bare / "config.json")
        argv, main, want = [str(bare), "--out", str(target)], embed.main, "has no checkpoint"
    elif case == "no images":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "notes.txt").write_text("not an image")
        argv, main, want = [str(run), "--images", str(tmp_path / "docs"), "--out", str(target)], embed.main, \
            "no image files"
    elif case == "missing format package":
        monkeypatch.setitem(export.FORMATS, "onnx", ("onnx", "no_such_package_x"))
        argv, main, want = [str(run), "--format", "onnx", "--out", str(target)], export.main, \
            'no_such_package_x, not installed; pip install "arcdist[export]"'
    elif case == "a file that is not an image":
        (tmp_path / "notes.txt").write_text("not an image")
        argv, main, want = [str(run), "--images", str(tmp_path / "notes.txt"), "--out", str(target)], embed.main, \
            "notes.txt: not an image file; pass --images DIR"
    else:
        argv, main, want = [str(run), "--epoch", "9", "--out", str(target)], embed.main, "no checkpoint of epoch 9"
    before = snapshot(run)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err
    assert not target.exists() and snapshot(run) == before


def test_evaluate_pairs_writes_the_pairs_and_the_figures(run, tiny_data, tmp_path, capsys):
    import json

    from arcdist.evaluation import evaluate

    out = tmp_path / "v" / "pairs.npz"
    before = snapshot(run)
    assert evaluate.main([str(run), "--shift", "0", "--pairs", "200", "--pairs-out", str(out),
                          "--data-dir", str(tiny_data)]) == 0
    p, figures = np.load(out), json.loads(out.with_suffix(".json").read_text())
    labels = np.load(run / "features.npz")["labels"]
    assert len(p["i"]) == 200 and p["same"].sum() == 100 and np.array_equal(labels[p["i"]] == labels[p["j"]], p["same"])
    feats = np.load(run / "features.npz")["features"]
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    np.testing.assert_allclose(p["score"], np.sum(x[p["i"]] * x[p["j"]], axis=1), atol=1e-5)
    assert set(figures) >= {"accuracy", "roc_auc", "tar_at_far_0.001", "tar_at_far_0.01", "threshold"}
    distinct = len({(min(a, b), max(a, b)) for a, b in zip(p["i"].tolist(), p["j"].tolist())})
    assert figures["distinct_pairs"] == distinct
    printed = capsys.readouterr().out
    assert "verification, 200 pairs: accuracy" in printed and ", plain: test accuracy" in printed
    assert "averaged over" not in printed  # --shift 0: the one view is the plain one
    assert ("the 10-fold figures are optimistic" in printed) == (distinct < 200)
    assert evaluate.main([str(run), "--shift", "0", "--pairs", "20000", "--pairs-out", str(tmp_path / "many.npz"),
                          "--data-dir", str(tiny_data)]) == 0  # 101 test images: 5,050 pairs at most
    assert "pairs differ (a small test split); the 10-fold figures are optimistic" in capsys.readouterr().out
    assert snapshot(run) == before  # reads only


def test_one_unseen_class_skips_its_retrieval_and_pairs_with_a_line(tiny_data, tmp_path_factory, tmp_path, capsys):
    """A run trained on 9 of 10 digits: among one unseen class every neighbour is right and no pair differs, so
    its retrieval figures are left out of the metrics and `evaluate --pairs` says why it skips their pairs (it
    was a traceback)."""
    import json

    from arcdist.evaluation import evaluate

    out = trained(tmp_path_factory, tiny_data, "one-unseen", 1, "--set", "data.train_classes=[0,1,2,3,4,5,6,7,8]",
                  "--set", "train.retrieval=true")
    row = metric_rows(out)[-1]
    assert "unseen_auroc" in row and "unseen_precision_at_1" not in row and "precision_at_1" in row
    assert evaluate.main([str(out), "--shift", "0", "--pairs", "100", "--pairs-out", str(tmp_path / "p.npz"),
                          "--data-dir", str(tiny_data), "--json", str(tmp_path / "all.json")]) == 0
    printed = capsys.readouterr().out
    assert "verification, 100 pairs: accuracy" in printed
    assert "verification, unseen classes: skipped (the unseen classes' " in printed and "at least two classes" in printed
    result = json.loads((tmp_path / "all.json").read_text())
    assert "verification" in result and "verification_unseen" not in result
    assert result["verification_unseen_skipped"].startswith("the unseen classes' ")
