"""Features above 2-D: W's even spread in d dimensions, the sphere figures, the d > 3 projection, and the
explorer's 3-D view (slider, hover, legend) in headless Chromium."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from arcdist import explore, figures
from arcdist.directions import min_angle_deg, spread
from arcdist.heads import build_head
from arcdist.heads.base import HeadConfig
from arcdist.sphere_figures import PROJECTION, cap_circle, fit_projection
from test_explore import CHROMIUM, run_explore

EPOCHS, N_TEST, POINTS = 2, 300, 240


@pytest.mark.parametrize("n, dim, best", [(10, 3, 66.147), (12, 3, 63.435), (4, 3, 109.471), (10, 9, 96.379),
                                          (20, 3, 47.431)])
def test_even_spread_is_within_a_tenth_of_a_degree_of_the_known_optimum(n, dim, best):
    # Tammes' problem on the sphere (Sloane's tables), the regular simplex for n = d + 1
    u = spread(n, dim)
    assert u.shape == (n, dim) and torch.allclose(u.norm(dim=1), torch.ones(n), atol=1e-6)
    assert best - 0.1 < min_angle_deg(u) <= best + 1e-3


def test_2d_spread_is_the_circle_and_the_slots_are_chained_nearest_first():
    u = spread(10, 2)
    assert torch.allclose(u, torch.stack([torch.cos(torch.arange(10) * 2 * math.pi / 10),
                                          torch.sin(torch.arange(10) * 2 * math.pi / 10)], 1))
    v = spread(10, 3).double()
    for p in range(8):  # slot p + 1 is the nearest of the slots not yet used
        later = v[p + 1:] @ v[p]
        assert later.argmax() == 0


def test_even_init_and_order_place_each_class_in_its_slot_in_3d():
    order = (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)
    head = build_head(HeadConfig(kind="arcface", init="even", order=order), feature_dim=3)
    w = head.weight.detach()
    assert torch.allclose(w[list(order)], spread(10, 3)) and min_angle_deg(w) > 66.0
    sub = build_head(HeadConfig(kind="subcenter", init="even"), feature_dim=3).weight.detach()
    assert sub.shape == (30, 3)
    cls = torch.nn.functional.normalize(sub.view(10, 3, 3), dim=2)
    inside = torch.rad2deg(torch.acos((cls[:, 0] * cls[:, 2]).sum(1).clamp(-1, 1)))
    assert torch.allclose(inside, torch.full((10,), 6.0), atol=0.05)  # 1/12 of the 36 deg slot each way, as in 2-D


def test_the_cap_is_at_the_margins_angle_around_w():
    w = np.array([0.3, -0.5, 0.8])
    ring = cap_circle(w, 0.35)
    cos = ring @ (w / np.linalg.norm(w))
    assert np.allclose(np.linalg.norm(ring, axis=1), 1) and np.allclose(np.arccos(cos), 0.35)


def _synthetic_run(root, dim: int, rng) -> tuple:
    """A run folder with `dim`-D test features: class c around spread(10, dim)[c], further out each epoch."""
    from accelerate import Accelerator

    from arcdist.recorder import Recorder

    run = root / f"run-{dim}d"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dict(config=dict(data=dict(
        dataset="folder", data_dir=str(root / "nowhere"), classes=[f"c{k}" for k in range(10)])))))
    labels = rng.integers(0, 10, N_TEST)
    W = spread(10, dim).numpy()
    rec = Recorder(run, Accelerator(cpu=True))
    for epoch in range(1, EPOCHS + 1):
        wrong = np.arange(N_TEST) % 10 == 0  # every 10th point on the next class's direction
        feats = (1.0 + epoch) * W[(labels + wrong) % 10] + 0.05 * rng.standard_normal((N_TEST, dim))
        rec.save_features(epoch, "test", torch.tensor(feats, dtype=torch.float32), torch.from_numpy(labels),
                          dict(W=torch.from_numpy(W)), 0.2, "arcface caption")
    return run, labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("d3")
    rng = np.random.default_rng(0)
    return {dim: _synthetic_run(root, dim, rng) for dim in (3, 5)}


def test_3d_and_5d_runs_plot_on_the_sphere_and_the_projection_is_fitted_once(runs):
    for dim, (run, _) in runs.items():
        written = figures.render_all(run)
        names = sorted(p.name for p in written)
        assert names == ["test-raw-epoch-0001.png", "test-raw-epoch-0002.png", "test-raw.gif",
                         "test-sphere-epoch-0001.png", "test-sphere-epoch-0002.png"]
        assert (run / "features" / PROJECTION).is_file() == (dim > 3)
    run5 = runs[5][0]
    with np.load(run5 / "features" / PROJECTION) as saved:
        first = np.load(run5 / "features" / "test-epoch-0001.npz")["features"]
        assert np.allclose(saved["components"], fit_projection(first)["components"])


def test_a_features_file_of_another_size_in_the_same_run_is_refused(runs, tmp_path):
    run = tmp_path / "mixed"
    shutil.copytree(runs[3][0], run)
    path = run / "features" / "test-epoch-0002.npz"
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    d["features"], d["W"] = np.pad(d["features"], ((0, 0), (0, 2))), np.pad(d["W"], ((0, 0), (0, 2)))
    np.savez(path, **d)
    proc = run_explore(run)
    assert proc.returncode == 2 and "5-D features" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def page3d(runs, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/system-deps installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("page") / "explore.html"
    proc = run_explore(runs[3][0], "--out", out, "--points", POINTS, "--every", 1)
    assert proc.returncode == 0, proc.stderr
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        pg = b.new_page(viewport=dict(width=1400, height=900))
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(out.as_uri())
        pg.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
        assert errors == []
        yield pg
        b.close()


def _drawn3d(pg, panel: int) -> dict:
    return pg.evaluate("""(panel) => {
      const gd = document.getElementById('explorer'), out = {points: {}, visible: {}, types: []};
      gd.data.forEach((t, i) => {
        if (!t.meta || t.meta.panel !== panel) return;
        out.types.push(t.type);
        if (t.meta.role !== 'class') return;
        out.visible[t.meta.cls] = gd._fullData[i].visible;
        Array.from(t.customdata).forEach((k, j) => { out.points[k] = [t.x[j], t.y[j], t.z[j], t.meta.cls]; });
      });
      return out; }""", panel)


def test_the_3d_view_draws_the_saved_points_and_the_sphere_their_directions(page3d, runs):
    run, labels = runs[3]
    index = explore.sample_points(N_TEST, POINTS)
    for key, epoch in (("Home", 1), ("End", 2)):
        page3d.focus("#epoch")
        page3d.keyboard.press(key)
        page3d.wait_for_function(f"document.body.dataset.epoch === '{epoch}'")
        f = np.load(run / "features" / f"test-epoch-{epoch:04d}.npz")
        raw, sphere = _drawn3d(page3d, 0), _drawn3d(page3d, 1)
        assert set(raw["types"]) == {"scatter3d"}
        got = {int(index[int(j)]): v for j, v in raw["points"].items()}
        assert sorted(got) == index.tolist()
        step = (f["features"][index].max(0) - f["features"][index].min(0)) / (explore.MISSING - 1)
        for k in index[::29]:
            assert got[int(k)][3] == labels[k]
            assert np.all(np.abs(np.array(got[int(k)][:3]) - f["features"][k]) <= step / 2 + 1e-9)
        unit = np.array([v[:3] for v in sphere["points"].values()])
        assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-9)


def test_hover_legend_and_class_names_in_3d(page3d, runs):
    _, labels = runs[3]
    index = explore.sample_points(N_TEST, POINTS)
    # plotly picks points in a WebGL scene itself; what the page adds is its hover handler, given plotly's event
    text = page3d.evaluate("""() => { const gd = document.getElementById('explorer');
      const t = gd.data.find((t) => t.meta && t.meta.role === 'class' && t.meta.panel === 0 && t.customdata.length);
      gd.emit('plotly_hover', {points: [{data: t, customdata: t.customdata[0]}], event: {}});
      return [t.customdata[0], document.getElementById('tip-text').innerText]; }""")
    place, tip = text
    k = int(index[int(place)])
    assert f"test image #{k}" in tip and f"label c{labels[k]}" in tip and "from W of" in tip
    page3d.locator(".legend .traces").nth(4).click()
    page3d.wait_for_function("""() => document.getElementById('explorer')._fullData
        .filter((t) => t.meta && t.meta.role === 'class' && t.meta.cls === 4).every((t) => t.visible === 'legendonly')""")
    names = page3d.evaluate("() => Array.from(document.querySelectorAll('.legend .traces .legendtext'))"
                            ".map((t) => t.textContent)")
    assert names == [f"c{k}" for k in range(10)]


def test_the_3d_raw_plot_draws_center_losss_centers_it_sizes_its_axes_for():
    """Center loss in 3-D: the axes fit the centers (figures._extent), so the figure draws them, as crosses in
    their class's colour (it drew none: the cloud sat squeezed inside axes sized for absent points)."""
    from matplotlib.colors import to_hex

    from arcdist.palette import class_colours
    from arcdist.sphere_figures import raw3d_figure

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    centers = rng.normal(size=(4, 3)) * 3
    limit = float(np.abs(centers).max()) * 1.05
    fig = raw3d_figure(rng.normal(size=(100, 3)), labels, limit, "t", centers=centers, rows=np.array([0, 1, 2, 3]))
    crosses = fig.axes[0].collections[-1]
    assert np.allclose(np.stack(crosses._offsets3d, 1), centers)
    assert [to_hex(c) for c in crosses._original_facecolor] == class_colours(4)  # (matplotlib 3.11: as given)
    assert len(raw3d_figure(rng.normal(size=(100, 3)), labels, 4.0, "t").axes[0].collections) == 4  # none without
