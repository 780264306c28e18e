"""arcdist.explore: the interactive feature page, driven in headless Chromium, and the W&B features table."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from arcdist import explore
from arcdist.data import load_dataset
from arcdist.tracking import read_offline_run
from helpers import PLOTS, ROOT, TINY, cli_env, make_tiny_mnist, run_train

CHROMIUM = shutil.which("chromium")
EPOCHS, N_TEST, POINTS = 3, 240, 200
KINDS = ("softmax", "arcface", "center")


def run_explore(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "arcdist.explore", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


# --- a synthetic grid, written by the recorder's own save_features ----------------------------------------
def _features(kind: str, labels: np.ndarray, epoch: int, rng) -> tuple[np.ndarray, dict, float, str]:
    """Class c around the direction 36 c deg, further out each epoch; every 10th point sits on the next class's ray.
    The third run ('center') is 1000x larger, so that its axes must not flatten the others'."""
    angle = np.radians(36.0 * labels + 36.0 * (np.arange(len(labels)) % 10 == 0))
    radius = (1.0 + epoch) * (1.0 + 0.1 * rng.standard_normal(len(labels)))
    feats = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1) + 0.05 * rng.standard_normal((len(labels), 2))
    W = np.stack([np.cos(np.radians(36.0 * np.arange(10))), np.sin(np.radians(36.0 * np.arange(10)))], 1)
    geometry = dict(W=torch.tensor(W, dtype=torch.float32))
    if kind in ("softmax", "center"):
        geometry["b"] = torch.zeros(10)
    if kind == "center":
        feats = feats * 1000.0
        geometry["centers"] = torch.tensor(W * 1000.0 * (1.0 + epoch), dtype=torch.float32)
    margin = 0.2 if kind == "arcface" else 0.0
    return feats.astype(np.float32), geometry, margin, f"{kind} caption"


@pytest.fixture(scope="module")
def synthetic_grid(tmp_path_factory):
    from accelerate import Accelerator

    from arcdist.recorder import Recorder

    root = tmp_path_factory.mktemp("explore")
    data = make_tiny_mnist(root / "data", n_train=16, n_test=N_TEST, seed=3)
    labels = load_dataset("mnist", data, download=False).test_y.numpy()
    grid = root / "grid"
    jobs = []
    rng = np.random.default_rng(0)
    for i, kind in enumerate(KINDS):
        run = grid / f"L-{kind}-s0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(dict(config=dict(data=dict(dataset="mnist", data_dir=str(data))))))
        rec = Recorder(run, Accelerator(cpu=True))
        for epoch in range(1, EPOCHS + 1):
            feats, geometry, margin, caption = _features(kind, labels, epoch, rng)
            rec.save_features(epoch, "test", torch.from_numpy(feats), torch.from_numpy(labels), geometry, margin,
                              caption)
        jobs.append(dict(index=i, variant=f"L-{kind}", seed=0, dataset="mnist", run_dir=str(run), status="finished"))
    (grid / "grid.json").write_text(json.dumps(dict(grid_id="syn", jobs=jobs)))
    page = root / "page.html"
    proc = run_explore(grid, "--out", page, "--points", POINTS, "--every", 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(root=root, grid=grid, page=page, labels=labels, proc=proc)


def saved(grid: Path, kind: str, epoch: int) -> dict:
    with np.load(grid / f"L-{kind}-s0" / "features" / f"test-epoch-{epoch:04d}.npz") as f:
        return {k: f[k] for k in f.files}


def test_page_is_self_contained_and_holds_the_chosen_points(synthetic_grid):
    page = synthetic_grid["page"].read_text()
    assert "explorer: " in synthetic_grid["proc"].stdout and "3 panels, 3 of 3 epochs, 200 points" in \
        synthetic_grid["proc"].stdout
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)  # plotly.js inline, nothing to fetch
    data = json.loads(re.search(r'id="arcdist-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    assert data["epochs"] == [1, 2, 3] and [p["title"] for p in data["panels"]] == [f"L-{k}-s0" for k in KINDS]
    src = data["sources"][0]
    index = np.frombuffer(__import__("base64").b64decode(src["index"]), "<u4")
    assert len(index) == POINTS and np.array_equal(index, explore.sample_points(N_TEST, POINTS))
    assert src["sprite"].startswith("data:image/png;base64,") and not data["warnings"]


def test_quantised_coordinates_stay_within_half_a_step():
    v = np.array([-3.0, 0.0, 1e-3, 2.5, np.nan, np.inf], np.float64)
    codes, lo, hi = explore.quantise(v)
    back = explore.dequantise(codes, lo, hi)
    assert (lo, hi) == (-3.0, 2.5) and codes[4] == codes[5] == explore.MISSING
    assert np.isnan(back[4:]).all()
    assert np.abs(back[:4] - v[:4]).max() <= (hi - lo) / (explore.MISSING - 1) / 2 + 1e-12


def test_default_every_fits_the_size_budget(synthetic_grid, tmp_path):
    info = explore.build_page(synthetic_grid["grid"], tmp_path / "p.html", points=POINTS, max_mb=0.0)
    assert info["epochs"] == [1, EPOCHS] and info["every"] == EPOCHS  # only the first and last fit "0 MB"
    info = explore.build_page(synthetic_grid["grid"], tmp_path / "q.html", points=POINTS)
    assert info["epochs"] == [1, 2, 3] and info["bytes"] < 20e6


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing-epoch", "torn-file", "not-a-run"])
def test_a_broken_features_folder_is_one_line_exit_2_and_no_page(synthetic_grid, tmp_path, case):
    grid = tmp_path / "grid"
    shutil.copytree(synthetic_grid["grid"], grid)
    grid_json = json.loads((grid / "grid.json").read_text())
    for job in grid_json["jobs"]:
        job["run_dir"] = str(grid / Path(job["run_dir"]).name)
    (grid / "grid.json").write_text(json.dumps(grid_json))
    bad = grid / "L-arcface-s0" / "features" / "test-epoch-0002.npz"
    target = grid
    if case == "missing-epoch":
        bad.unlink()
    elif case == "torn-file":
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        target = tmp_path / "empty"
        target.mkdir()
    proc = run_explore(target, "--out", tmp_path / "out.html")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arcdist.explore: error: "), proc.stderr
    assert not (tmp_path / "out.html").exists()
    if case == "not-a-run":
        assert "has neither features/ nor grid.json" in lines[0]
    else:
        assert str(bad) in lines[0]
        assert ("is missing (epoch 2 of 3)" if case == "missing-epoch" else "cannot be read") in lines[0]


# --- in headless Chromium ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/system-deps installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, synthetic_grid):
    pg = browser.new_page(viewport=dict(width=1600, height=1000))
    outside = []
    pg.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(synthetic_grid["page"].as_uri())
    pg.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    assert outside == [] and errors == []
    yield pg
    pg.close()


def drawn(pg, panel: int) -> dict:
    """What plotly holds for one panel's class traces: test index -> (x, y), and which traces are visible."""
    return pg.evaluate("""(panel) => {
      const gd = document.getElementById('explorer'), out = {points: {}, visible: {}};
      gd.data.forEach((t, i) => {
        if (!t.meta || t.meta.panel !== panel || t.meta.role !== 'class') return;
        out.visible[t.meta.cls] = gd._fullData[i].visible;
        Array.from(t.customdata).forEach((k, j) => { out.points[k] = [t.x[j], t.y[j], t.meta.cls]; });
      });
      return out; }""", panel)


def set_epoch(pg, key: str, want: int) -> None:
    pg.focus("#epoch")
    pg.keyboard.press(key)
    pg.wait_for_function(f"document.body.dataset.epoch === '{want}'")


def test_the_slider_draws_that_epochs_saved_features(page, synthetic_grid):
    index = explore.sample_points(N_TEST, POINTS)
    for key, epoch in (("Home", 1), ("ArrowRight", 2), ("End", 3)):
        set_epoch(page, key, epoch)
        assert page.inner_text("#epoch-label").startswith(f"epoch {epoch} ")
        for p, kind in enumerate(KINDS):
            # customdata: the point's place in the page's sample, index[place] its row in the test set
            got = {int(index[int(j)]): v for j, v in drawn(page, p)["points"].items()}
            f = saved(synthetic_grid["grid"], kind, epoch)
            assert sorted(got) == index.tolist()  # every chosen point once, in its own class's trace
            sub = f["features"][index].astype(np.float64)
            step = (sub.max(0) - sub.min(0)) / (explore.MISSING - 1)
            for k in index[::37]:
                x, y, cls = got[int(k)]
                assert cls == f["labels"][k]
                assert abs(x - f["features"][k, 0]) <= step[0] / 2 + 1e-9 * abs(x)
                assert abs(y - f["features"][k, 1]) <= step[1] / 2 + 1e-9 * abs(y)
    ranges = page.evaluate("""() => { const L = document.getElementById('explorer')._fullLayout;
                              return [L.xaxis.range[1], L.xaxis3.range[1]]; }""")
    f0, f2 = saved(synthetic_grid["grid"], "softmax", 3), saved(synthetic_grid["grid"], "center", 3)
    # each panel on its own axes: the 1000x run does not flatten the others
    assert ranges[0] == pytest.approx(1.05 * np.abs(f0["features"]).max(), rel=1e-3)
    assert ranges[1] == pytest.approx(1.05 * max(np.abs(f2["features"]).max(), np.abs(f2["centers"]).max()), rel=1e-3)


def test_hovering_a_point_shows_its_image_label_prediction_and_angle(page, synthetic_grid):
    set_epoch(page, "End", 3)
    f = saved(synthetic_grid["grid"], "arcface", 3)
    index = explore.sample_points(N_TEST, POINTS)
    pred = explore.predictions(f["features"], dict(W=f["W"]))
    angle = explore.angles_to_class(f["features"], f["labels"], f["W"])
    # a misclassified point far from every other, so that the pointer lands on it alone
    pts = f["features"][index]
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(len(pts)) * 1e9
    wrong = [j for j in range(len(index)) if pred[index[j]] != f["labels"][index[j]]]
    j = max(wrong, key=lambda j: dist[j].min())
    k = int(index[j])
    xy = page.evaluate("""([x, y]) => { const gd = document.getElementById('explorer'), L = gd._fullLayout,
        r = gd.getBoundingClientRect();
        return [r.left + L.xaxis2._offset + L.xaxis2.l2p(x), r.top + L.yaxis2._offset + L.yaxis2.l2p(y)]; }""",
                       [float(f["features"][k, 0]), float(f["features"][k, 1])])
    page.mouse.move(xy[0] - 30, xy[1] - 30)
    page.mouse.move(*xy, steps=5)
    page.wait_for_selector("#tip", state="visible", timeout=10_000)
    text = page.inner_text("#tip-text")
    assert f"L-arcface-s0, test image #{k}\n" in text, text
    assert f"label {f['labels'][k]}\npredicted {pred[k]}\n{angle[k]:.1f}° from W of {f['labels'][k]}" in text, text
    style = page.evaluate("getComputedStyle(document.getElementById('tip-img')).backgroundImage")
    assert style.startswith('url("data:image/png;base64,')
    assert page.evaluate("document.querySelector('#tip-text .wrong') !== null")  # misclassified: in red
    page.mouse.move(5, 5)


def test_clicking_a_class_in_the_legend_hides_it_in_every_panel(page):
    page.locator(".legend .traces").nth(3).click()
    page.wait_for_function("""() => document.getElementById('explorer')._fullData
        .filter((t) => t.meta && t.meta.role === 'class' && t.meta.cls === 3).every((t) => t.visible === 'legendonly')""")
    for p in range(len(KINDS)):
        vis = drawn(page, p)["visible"]
        assert vis["3"] == "legendonly" and all(v is True for c, v in vis.items() if c != "3"), vis
    set_epoch(page, "Home", 1)  # a new epoch keeps the choice
    assert drawn(page, 0)["visible"]["3"] == "legendonly"
    page.locator(".legend .traces").nth(3).click()
    page.wait_for_function("""() => document.getElementById('explorer')._fullData
        .filter((t) => t.meta && t.meta.role === 'class').every((t) => t.visible === true)""")


def test_play_runs_to_the_last_epoch_and_the_panels_are_not_empty(page, synthetic_grid):
    from PIL import Image

    set_epoch(page, "Home", 1)
    page.click("#play")
    page.wait_for_function(f"document.body.dataset.epoch === '{EPOCHS}'", timeout=20_000)
    page.wait_for_function("document.getElementById('play').textContent.includes('play')", timeout=5_000)
    shot = synthetic_grid["root"] / "explore.png"
    page.screenshot(path=str(shot))
    boxes = page.evaluate("""() => { const gd = document.getElementById('explorer'), L = gd._fullLayout,
        r = gd.getBoundingClientRect();
        return [1, 2, 3].map((i) => { const x = L['xaxis' + (i > 1 ? i : '')], y = L['yaxis' + (i > 1 ? i : '')];
          return [r.left + x._offset, r.top + y._offset, x._length, y._length]; }); }""")
    # the same view with the points hidden: each panel's points must change a good number of its pixels
    page.evaluate("""() => { const gd = document.getElementById('explorer');
        const ids = gd.data.map((t, i) => i).filter((i) => gd.data[i].meta.role === 'class');
        return Plotly.restyle(gd, {visible: false}, ids); }""")
    bare = synthetic_grid["root"] / "explore-no-points.png"
    page.screenshot(path=str(bare))
    page.evaluate("""() => { const gd = document.getElementById('explorer');
        const ids = gd.data.map((t, i) => i).filter((i) => gd.data[i].meta.role === 'class');
        return Plotly.restyle(gd, {visible: true}, ids); }""")
    with_points, without = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (shot, bare))
    for left, top, w, h in boxes:
        box = (slice(int(top), int(top + h)), slice(int(left), int(left + w)))
        changed = (np.abs(with_points[box] - without[box]).sum(2) > 60)
        assert changed.sum() > 300, (left, top, changed.sum())  # 200 points of 4-7 px, a few overlapping
        assert len(np.unique(with_points[box][changed], axis=0)) > 20  # in many colours, not one blot


# --- a real tiny run: the page's predictions are the metrics', and W&B holds the features table -------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-real")
    data = make_tiny_mnist(root / "data", n_train=256, n_test=101)
    out = root / "run"
    args = [a for a in TINY if a not in ("--wandb", "disabled")]
    run_train([*args, *PLOTS, "--wandb", "offline", "--epochs", "2", "--data-dir", str(data), "--output-dir", str(out),
               "--set", "data.batch_size=64"])
    return out


@pytest.mark.slow
def test_wandb_holds_each_plotted_epochs_features_as_a_table(real_run):
    wb = read_offline_run(real_run)
    rows = [h for h in wb["history"] if "features/test" in h]
    assert [h["_step"] for h in rows] == [1, 2]
    files = list((real_run / "wandb").glob("offline-run-*/files"))
    assert len(files) == 1
    for h in rows:
        epoch, ref = h["_step"], h["features/test"]
        assert ref["_type"] == "table-file" and ref["nrows"] == 101 and ref["ncols"] == 5
        table = json.loads((files[0] / ref["path"]).read_text())
        assert table["columns"] == ["x", "y", "label", "prediction", "epoch"]
        f = dict(np.load(real_run / "features" / f"test-epoch-{epoch:04d}.npz"))
        pred = explore.predictions(f["features"], {k: f[k] for k in ("W", "b") if k in f})
        got = np.array(table["data"], dtype=np.float64)
        assert np.array_equal(got[:, :2], f["features"].astype(np.float64))
        assert np.array_equal(got[:, 2], f["labels"]) and np.array_equal(got[:, 3], pred)
        assert (got[:, 4] == epoch).all()


def test_run_page_predictions_match_the_logged_accuracy(real_run, tmp_path):
    info = explore.build_page(real_run, tmp_path / "run.html", points=0)
    assert info["panels"] == 2 and info["epochs"] == [1, 2] and info["points"] == 101 and not info["warnings"]
    page = (tmp_path / "run.html").read_text()
    data = json.loads(re.search(r'id="arcdist-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    metrics = [json.loads(line) for line in (real_run / "metrics.jsonl").read_text().splitlines()]
    for row in metrics:
        ep = data["series"][0]["epochs"][str(row["epoch"])]
        assert ep["acc"] == pytest.approx(row["test_accuracy"], abs=1e-9)
        assert ep["logged_acc"] == row["test_accuracy"]
    assert [p["view"] for p in data["panels"]] == ["raw", "circle"]


def test_wandb_table_holds_the_pages_sample_beyond_its_row_limit():
    """Above WANDB_TABLE_ROWS test images the table holds the page's seeded sample, in dataset order."""
    from arcdist.explore.features import feature_rows

    n = explore.WANDB_TABLE_ROWS + 501
    rng = np.random.default_rng(3)
    feats, labels = rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 10, n)
    W = rng.normal(size=(10, 2)).astype(np.float32)
    rows = np.array(feature_rows(feats, labels, dict(W=W), 7), dtype=np.float64)
    index = explore.sample_points(n, explore.DEFAULT_POINTS)
    assert explore.WANDB_TABLE_ROWS == explore.DEFAULT_POINTS and rows.shape == (explore.DEFAULT_POINTS, 5)
    assert np.array_equal(rows[:, :2], feats[index].astype(np.float64))
    assert np.array_equal(rows[:, 2], labels[index]) and (rows[:, 4] == 7).all()
    assert np.array_equal(rows[:, 3], explore.predictions(feats, dict(W=W))[index])


def test_above_20_classes_w_is_a_ring_of_ticks_without_caps_and_absent_behind_raw_points(browser, tmp_path):
    """The figures' rule (arcdist.palette.dense) on the page: 25 directions with a margin are 25 ticks outside the
    unit circle, no sectors, and nothing behind the raw panel's points (1,000 rays and caps filled the disc); no
    legend of 25 entries (1,000 scrolled), the class count said instead (arcdist.palette.legend_rule)."""
    from accelerate import Accelerator

    from arcdist.recorder import Recorder

    n, per = 25, 4
    labels = np.repeat(np.arange(n), per)
    angle = 2 * np.pi * labels / n
    feats = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32) * 2
    W = torch.tensor(np.stack([np.cos(2 * np.pi * np.arange(n) / n), np.sin(2 * np.pi * np.arange(n) / n)], 1),
                     dtype=torch.float32)
    run = tmp_path / "dense-s0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dict(config=dict(data=dict(dataset="folder", classes=[
        "<i>c0</i>", *(f"c{k}" for k in range(1, n))])))))  # a folder name is text, never markup
    Recorder(run, Accelerator(cpu=True)).save_features(1, "test", torch.from_numpy(feats), torch.from_numpy(labels),
                                                       dict(W=W), 0.2, "arcface caption")
    explore.build_page(run, tmp_path / "dense.html", points=0)
    pg = browser.new_page(viewport=dict(width=1400, height=800))
    pg.goto((tmp_path / "dense.html").as_uri())
    pg.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    shapes = pg.evaluate("() => document.getElementById('explorer').layout.shapes")
    entries = pg.evaluate("() => document.querySelectorAll('.legend .traces').length")
    note = pg.inner_text("p.note")
    xy = pg.evaluate("""() => { const gd = document.getElementById('explorer'), L = gd._fullLayout,
        r = gd.getBoundingClientRect();
        return [r.left + L.xaxis._offset + L.xaxis.l2p(2), r.top + L.yaxis._offset + L.yaxis.l2p(0)]; }""")
    pg.mouse.move(xy[0] - 30, xy[1] - 30)
    pg.mouse.move(*xy, steps=5)  # class 0's points, at (2, 0) in the raw panel
    pg.wait_for_selector("#tip", state="visible", timeout=10_000)
    tip = pg.inner_text("#tip-text")
    pg.close()
    assert "label <i>c0</i>\npredicted <i>c0</i>" in tip, tip
    assert entries == 0 and "25 classes (colours by label, cyclic): hover a point for its class" in note  # no legend
    lines = [s for s in shapes if s["type"] == "line"]
    assert not [s for s in shapes if s["type"] == "path"]  # no margin sectors
    assert len(lines) == n and {s["xref"] for s in lines} == {"x2"}  # the circle panel only
    assert all(np.hypot(s["x0"], s["y0"]) == pytest.approx(1.08) and np.hypot(s["x1"], s["y1"]) == pytest.approx(1.25)
               for s in lines)


def test_a_colour_folder_runs_tooltip_images_are_its_held_out_images_in_colour(tmp_path):
    """The tooltips show the run's own test images as it read them: its channels (colour here, not grey), its
    held-out split of a folder of classes (data.test_fraction), at most THUMB px; another split is named, no image."""
    from accelerate import Accelerator
    from PIL import Image

    from arcdist.datasets.folder import Decoder, ImageFolderDataset, decode_all
    from arcdist.recorder import Recorder

    rng = np.random.default_rng(0)
    for c in "abc":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    held = ImageFolderDataset(tmp_path / "d", channels=3, image_size=96, test_fraction=0.4).test
    assert len(held.paths) == 6
    run = tmp_path / "colour-s0"
    run.mkdir()
    config = dict(data=dict(dataset="folder", data_dir=str(tmp_path / "d"), classes=list("abc"), test_fraction=0.4),
                  model=dict(in_channels=3, image_size=96))
    (run / "config.json").write_text(json.dumps(dict(config=config)))
    W = torch.eye(3, 2)
    Recorder(run, Accelerator(cpu=True)).save_features(1, "test", torch.randn(6, 2), held.labels, dict(W=W), 0.2, "c")
    series = explore.find_panels(run)[0][0]
    images, why = explore.load_images(series, None, np.array([5, 0, 3]))
    assert why == "" and images.shape == (3, 3, explore.THUMB, explore.THUMB)
    want = decode_all(tuple(held.paths[i] for i in (5, 0, 3)), Decoder(3, explore.THUMB)).numpy()
    assert np.array_equal(images, want)
    series.test_fraction = 0.2  # another split of the folder: 3 test images, not the features' 6
    images, why = explore.load_images(series, None, np.array([0]))
    assert images is None and "do not match" in why


def test_the_circle_shades_where_the_margin_is_met(browser, tmp_path):
    """The page's circle panel shades each class's sector where ArcFace's margin is met, as the figures do
    (arcdist.directions.margin_zones): at 0.5 rad with ten classes 36 deg apart, +-3.7 deg around each direction;
    none around an unseen class's zero row, none at all for 20 classes 18 deg apart."""
    from accelerate import Accelerator

    from arcdist.directions import margin_zones
    from arcdist.recorder import Recorder

    for n, margin, unseen in ((10, 0.5, 3), (20, 0.5, None)):
        labels = np.repeat(np.arange(n), 3)
        angles = 360.0 * np.arange(n) / n
        W = np.stack([np.cos(np.radians(angles)), np.sin(np.radians(angles))], 1)
        feats = W[labels] * 2
        if unseen is not None:
            W[unseen] = 0.0
        run = tmp_path / f"zones{n}-s0"
        run.mkdir()
        Recorder(run, Accelerator(cpu=True)).save_features(1, "test", torch.tensor(feats, dtype=torch.float32),
                                                           torch.from_numpy(labels),
                                                           dict(W=torch.tensor(W, dtype=torch.float32)), margin, "c")
        explore.build_page(run, tmp_path / f"zones{n}.html", points=0)
        pg = browser.new_page(viewport=dict(width=1400, height=800))
        pg.goto((tmp_path / f"zones{n}.html").as_uri())
        pg.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
        shapes = pg.evaluate("() => document.getElementById('explorer').layout.shapes")
        pg.close()
        sectors = [s for s in shapes if s["type"] == "path" and s["xref"] == "x2"]
        seen = [c for c in range(n) if c != unseen]
        want = [z for c, z in zip(seen, margin_zones(angles[seen], np.degrees(margin))) if z[1] > z[0]]
        assert len(sectors) == len(want) == (9 if n == 10 else 0)
        for s, (lo, hi), c in zip(sectors, want, seen):
            xy = np.array([p.split() for p in s["path"].rstrip(" Z").split(" L ")[1:]], float)  # the arc's points
            drawn = np.degrees(np.arctan2(xy[:, 1], xy[:, 0]))
            assert (drawn[0] - lo + 180) % 360 - 180 == pytest.approx(0, abs=1e-4)
            assert (drawn[-1] - drawn[0]) % 360 == pytest.approx(hi - lo)
            assert hi - lo == pytest.approx(36.0 - np.degrees(margin) + (18.0 if c in (2, 4) else 0.0))  # by class 3's gap


def test_the_pages_sphere_caps_are_where_the_margin_is_met_and_absent_through_a_projection():
    """3-D features: each seen class's cap radius is arcdist.directions.margin_caps' (0 for an unseen zero row);
    above 3-D (drawn through a projection, which does not keep angles) the page gets no caps, as the figures."""
    from arcdist.directions import margin_caps, spread

    W = spread(10, 3).double().numpy()
    W[3] = 0.0
    labels = np.arange(10).repeat(2)
    d = dict(features=np.abs(W[labels]) + 0.1, labels=labels, W=W, margin=0.5)
    out = explore.epoch_payload(d, np.arange(20), None)
    seen = [c for c in range(10) if c != 3]
    assert out["caps"][3] == 0.0 and np.allclose([out["caps"][c] for c in seen], margin_caps(W[seen], 0.5))
    assert min(out["caps"][c] for c in seen) > 0.1
    out = explore.epoch_payload(dict(d, ang=np.zeros(20)), np.arange(20), None)
    assert "caps" not in out and "zones" not in out


def test_the_sphere_panel_draws_a_cap_where_the_margin_can_be_met(browser, tmp_path):
    """A 3-D run's page: on the sphere panel every class's direction and, for each non-empty cap, a ring of 33
    points at the cap's radius (arcdist.directions.margin_caps) around its direction."""
    from accelerate import Accelerator

    from arcdist.directions import margin_caps, spread
    from arcdist.recorder import Recorder

    W = spread(10, 3)
    labels = torch.arange(10).repeat_interleave(3)
    run = tmp_path / "sphere-s0"
    run.mkdir()
    Recorder(run, Accelerator(cpu=True)).save_features(1, "test", W[labels] * 2, labels, dict(W=W), 0.5, "c")
    explore.build_page(run, tmp_path / "sphere.html", points=0)
    pg = browser.new_page(viewport=dict(width=1400, height=800))
    pg.goto((tmp_path / "sphere.html").as_uri())
    pg.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    traces = pg.evaluate("() => document.getElementById('explorer').data.filter((t) => t.meta && "
                         "t.meta.role === 'directions').map((t) => [t.x, t.y, t.z])")
    pg.close()
    xs, ys, zs = max(traces, key=lambda t: len(t[0]))  # the sphere panel's (the raw panel has rays only)
    cuts = [i for i, v in enumerate(xs) if v is None]
    pieces = [np.array([xs[a + 1:b], ys[a + 1:b], zs[a + 1:b]], float).T for a, b in zip([-1, *cuts], cuts)]
    rings = [p for p in pieces if len(p) == 33]
    radii = margin_caps(W.double().numpy(), 0.5)
    assert len([p for p in pieces if len(p) == 2]) == 10 and len(rings) == 10
    for c, ring in enumerate(rings):
        angle = np.arccos(np.clip(ring @ W[c].double().numpy(), -1, 1))
        assert np.allclose(angle, radii[c], atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_page_budget_counts_every_stored_byte_of_an_epoch(dims):
    """The size estimate that picks how many epochs fit `--max-mb` matches what an epoch stores: a 16-bit code per
    coordinate and a 16-bit prediction (it counted 5 bytes a point, short by 1 in 2-D and by 3 in 3-D)."""
    from arcdist.explore.features import epoch_payload, estimate_bytes

    rng, n, classes = np.random.default_rng(0), 3000, 10
    W = rng.normal(size=(classes, dims))
    d = dict(features=rng.normal(size=(n, dims)), labels=rng.integers(0, classes, n), W=W, margin=0.0)
    stored = json.dumps(epoch_payload(d, np.arange(n), 0.5))
    assert len(stored) <= estimate_bytes(1, 1, n, dims) <= 1.05 * len(stored)  # never short: the page fits
