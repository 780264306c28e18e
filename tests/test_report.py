"""arcdist.report on a real tiny grid: numbers against metrics.jsonl, a self-contained page, the W&B spec."""
import base64
import importlib.util
import io
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from arcdist import report, wandb_report
from helpers import ROOT, T0_BACKBONE, TINY, cli_env, make_tiny_mnist, run_train

VARIANTS, SEEDS = ("V2", "V2.1"), (0, 1)  # on the test backbone (T0_BACKBONE)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb_workspaces")  # its pydantic v1 validators


def run_report(args, home, timeout=300):
    return subprocess.run([sys.executable, "-m", "arcdist.report", *map(str, args)], cwd=ROOT,
                          env=cli_env(HOME=str(home)), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 variants x 2 seeds x 2 epochs, then the default report and one with low thresholds and --push."""
    root = tmp_path_factory.mktemp("report")
    data = make_tiny_mnist(root / "data", n_train=256, n_test=50)
    grid_dir = root / "runs" / "g"
    jobs = []  # what `arcdist grid --variants V2,V2.1 --seeds 0,1` trains (its runner: tests/test_grid.py), forked here
    for v in VARIANTS:
        for seed in SEEDS:
            run = grid_dir / f"{v}-s{seed}"
            run_train([*TINY, "--variant", v, "--seed", str(seed), "--epochs", "2", "--data-dir", str(data),
                       "--output-dir", str(run), "--group", "g", "--set", "data.batch_size=64", *T0_BACKBONE])
            jobs.append(dict(index=len(jobs), variant=v, seed=seed, dataset="mnist", run_dir=str(run),
                             status="finished"))
    (grid_dir / "grid.json").write_text(json.dumps(dict(grid_id="g", jobs=jobs)))
    default = run_report([grid_dir], root)
    assert default.returncode == 0, default.stdout + default.stderr
    low = run_report([grid_dir, "--out", root / "low", "--threshold-acc", "0.1", "--threshold-angle", "0", "--push"],
                     root)
    assert low.returncode == 0, low.stdout + low.stderr
    return dict(root=root, grid=grid_dir, out=grid_dir / "report", low=root / "low", low_proc=low)


def expected(grid_dir, threshold_acc):
    """Per variant, computed here from metrics.jsonl: (mean, std) of each statistic, epochs-to mean."""
    out = {}
    for v in VARIANTS:
        runs = [[json.loads(line) for line in (grid_dir / f"{v}-s{s}" / "metrics.jsonl").read_text().splitlines()]
                for s in SEEDS]
        per = dict(final_accuracy=[r[-1]["test_accuracy"] for r in runs],
                   best_accuracy=[max(x["test_accuracy"] for x in r) for r in runs],
                   intra_spread_deg=[r[-1]["intra_spread_deg"] for r in runs],
                   min_centre_angle_deg=[r[-1]["min_centre_angle_deg"] for r in runs],
                   worst_class_accuracy=[r[-1]["worst_class_accuracy"] for r in runs],
                   wall_time_s=[sum(x["epoch_time_s"] for x in r) for r in runs])
        stats = {k: (statistics.mean(x), statistics.stdev(x)) for k, x in per.items()}
        reached = [next((x["epoch"] for x in r if x["test_accuracy"] >= threshold_acc), None) for r in runs]
        reached = [e for e in reached if e is not None]
        worst = [r[-1]["worst_class"] for r in runs]  # each seed's own: one label per class, most frequent first
        label = ", ".join(str(w) for w in sorted(set(worst), key=lambda w: (-worst.count(w), w)))
        out[v] = dict(stats=stats, epochs_to=statistics.mean(reached) if reached else None, n_reached=len(reached),
                      worst=label)
    return out


DIGITS = dict(final_accuracy=4, best_accuracy=4, intra_spread_deg=2, min_centre_angle_deg=2, worst_class_accuracy=4,
              wall_time_s=1)


@pytest.mark.slow
def test_numbers_match_metrics_and_appear_in_html(grid):
    summary = json.loads((grid["out"] / "summary.json").read_text())
    page = (grid["out"] / "report.html").read_text()
    rows = {r["variant"]: r for r in summary["variants"]}
    assert list(rows) == list(VARIANTS)
    assert "ddof=1" in summary["std"] and "ddof=1" in page
    for v, want in expected(grid["grid"], 0.97).items():
        assert f"<td>{v}</td>" in page
        assert rows[v]["seeds"] == list(SEEDS) and rows[v]["diverged_seeds"] == 0
        for key, (mean, std) in want["stats"].items():
            assert rows[v][key]["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12), (v, key)
            assert rows[v][key]["std"] == pytest.approx(std, rel=1e-9, abs=1e-12), (v, key)
            assert f"{mean:.{DIGITS[key]}f} ± {std:.{DIGITS[key]}f}" in page, (v, key)
        assert rows[v]["worst_class"] == want["worst"], v
        epochs = rows[v]["display"]["epochs to acc threshold"]
        assert epochs == "never" if want["epochs_to"] is None else epochs.startswith(f"{want['epochs_to']:.1f}")
    md = (grid["out"] / "report.md").read_text()
    assert all(f"| {v} |" in md for v in VARIANTS)
    assert all((grid["out"] / name).is_file() for name in report.IMAGES)


def test_thresholds_drive_epochs_to_and_verdict(grid):
    summary = json.loads((grid["low"] / "summary.json").read_text())
    page = (grid["low"] / "report.html").read_text()
    assert "the mean final test accuracy is at least 0.1 and" in page and "is at least 0 deg" in page
    for row in summary["variants"]:
        want = expected(grid["grid"], 0.1)[row["variant"]]
        got = row["epochs_to"]
        assert got["reached"] == want["n_reached"]
        assert got["mean"] == (None if want["epochs_to"] is None else pytest.approx(want["epochs_to"]))
        separated = want["stats"]["final_accuracy"][0] >= 0.1
        assert row["measured_verdict"] == ("separated" if separated else "overlap")
        assert row["post_verdict"] == "overlap"


def test_html_is_self_contained(grid):
    page = (grid["out"] / "report.html").read_text()
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(srcs) == len(re.findall(r"<img\b", page)) == len(report.IMAGES) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 300
    assert not re.search(r"<script|<link|@import|url\(|https?://", page)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/system-deps installs it)")
def test_html_renders_in_headless_chromium(grid):
    shot = grid["root"] / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tempfile.mkdtemp(dir=grid['root'])}", f"--screenshot={shot}", "--window-size=1280,2000",
           (grid["out"] / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    not_white = (pixels < 245).any(axis=1).mean()
    assert len(colours) > 100 and not_white > 0.02, (len(colours), not_white)


def test_wandb_spec_names_group_and_panels(grid):
    spec = json.loads((grid["out"] / "wandb_report.json").read_text())
    assert spec["group"] == "g"
    assert spec["runset"]["filters"] == [dict(section="run", key="Group", op="==", value="g")]
    panels = {(p["type"], p["title"]): p for p in spec["panels"]}
    kinds = sorted(t for t, _ in panels)
    assert kinds == ["bar", "line", "line", "media", "scatter"]
    lines = {p["y"][0]: p for p in spec["panels"] if p["type"] == "line"}
    assert set(lines) == {"test_accuracy", "train_loss"}
    assert all(p["groupby"] == "config:variant" for p in spec["panels"] if p["type"] in ("line", "bar"))
    bar = next(p for p in spec["panels"] if p["type"] == "bar")
    scatter = next(p for p in spec["panels"] if p["type"] == "scatter")
    media = next(p for p in spec["panels"] if p["type"] == "media")
    assert bar["metrics"] == ["summary:final_accuracy"]
    assert (scatter["x"], scatter["y"]) == ("summary:params", "summary:final_accuracy")
    assert media["media_keys"] == ["plots/test_raw"]
    assert set(spec["summary_backfill"]) == set(VARIANTS) and spec["summary_backfill"]["V2"]["params"] > 0
    assert "--push-spec" in grid["low_proc"].stdout  # --push without credentials: the spec waits, exit 0


def test_spec_converts_to_wandb_workspaces_offline(grid):
    pytest.importorskip("wandb_workspaces")
    spec = wandb_report.wandb_report_spec(report.load_grid(grid["grid"]), "g")
    # an empty entity skips the runset's project lookup, so the whole report serialises without network
    model = json.loads(wandb_report.to_wandb_report(spec, entity="", project="arcdist")._to_model()
                       .spec.model_dump_json(by_alias=True, exclude_none=True))
    block = next(b for b in model["blocks"] if b.get("type") == "panel-grid")["metadata"]
    assert block["runSets"][0]["filters"]["filters"][0] | {"disabled": False} == dict(
        key=dict(section="run", name="group"), op="=", value="g", disabled=False)
    views = [(p["viewType"], p["config"]) for p in block["panelBankSectionConfig"]["panels"]]
    assert [v for v, _ in views] == ["Run History Line Plot", "Run History Line Plot", "Bar Chart", "Scatter Plot",
                                     "Media Browser"]
    assert views[0][1]["metrics"] == ["test_accuracy"] and views[0][1]["groupBy"] == "variant.value"
    assert views[2][1]["metrics"] == ["summary_metrics.final_accuracy"]
    assert views[3][1]["xAxis"] == "summary:params" and views[4][1]["mediaKeys"] == ["plots/test_raw"]


class _FakeRun:
    """What pull_group reads of a W&B run (wandb.apis.public.Run)."""

    def __init__(self, margin, seed, acc, dataset="mnist"):
        sweep = [f"head.margin={margin}"] if margin else []
        self.config = dict(variant="A8", train=dict(seed=seed), data=dict(dataset=dataset), sweep=sweep,
                           row=wandb_report.row_name("A8", dataset, sweep))
        self.summary, self.state, self.acc = dict(final_accuracy=acc, best_accuracy=acc), "finished", acc

    def scan_history(self):
        return [dict(_step=1, test_accuracy=self.acc - 0.01, train_loss=1.0), dict(_step=2, test_accuracy=self.acc)]


def test_a_sweeps_rows_stay_apart_in_the_wandb_report_and_when_pulled_back(tmp_path, monkeypatch):
    """A sweep's rows share their variant: the W&B Report groups by the `row` train.py records ("A8
    head.margin=0.5"), and a pulled group gives each row's seeds their own folders and report row (they shared
    A8-s0 and overwrote each other before)."""
    runs = [_FakeRun(m, s, acc) for m, accs in (("0.2", (0.90, 0.92)), ("0.5", (0.95, 0.97)))
            for s, acc in enumerate(accs)]
    api = type("Api", (), dict(default_entity="e", runs=lambda self, path, filters: runs))()
    monkeypatch.setattr(wandb_report, "_wandb_api", lambda timeout: api)
    doc = json.loads((wandb_report.pull_group("m", "e", "arcdist", tmp_path / "m") / "grid.json").read_text())
    assert sorted(Path(j["run_dir"]).name for j in doc["jobs"]) == [
        "A8-head.margin=0.2-s0", "A8-head.margin=0.2-s1", "A8-head.margin=0.5-s0", "A8-head.margin=0.5-s1"]
    rows = report.stats.summarise(doc, threshold_acc=0.5, threshold_angle=5.0)
    assert [(r["label"], r["seeds"], r["final_accuracy"]["mean"]) for r in rows] == [
        ("A8 head.margin=0.2", [0, 1], pytest.approx(0.91)), ("A8 head.margin=0.5", [0, 1], pytest.approx(0.96))]
    spec = wandb_report.wandb_report_spec(doc, "m")
    assert spec["runset"]["groupby"] == ["config:row"]
    assert [p["groupby"] for p in spec["panels"] if p["type"] in ("line", "bar")] == ["config:row"] * 3
    assert "Rows A8 head.margin=0.2, A8 head.margin=0.5;" in spec["description"]
    plain = wandb_report.wandb_report_spec(dict(doc, jobs=[dict(j, sets=[]) for j in doc["jobs"]]), "m")
    assert plain["runset"]["groupby"] == ["config:variant"]  # no sweep: by variant, as grids before `row` existed
    two = [_FakeRun(None, 0, 0.99), _FakeRun(None, 0, 0.90, "fashion-mnist")]  # one variant on two datasets
    monkeypatch.setattr(wandb_report, "_wandb_api", lambda timeout: type("Api", (), dict(
        default_entity="e", runs=lambda self, path, filters: two))())
    doc2 = json.loads((wandb_report.pull_group("d", "e", "arcdist", tmp_path / "d") / "grid.json").read_text())
    assert [Path(j["run_dir"]).name for j in doc2["jobs"]] == ["mnist-A8-s0", "fashion-mnist-A8-s0"]  # as grid names them
    spec2 = wandb_report.wandb_report_spec(doc2, "d")
    assert spec2["runset"]["groupby"] == ["config:row"] and "Rows A8, fashion-mnist A8;" in spec2["description"]
    assert [r.config["row"] for r in two] == ["A8", "fashion-mnist A8"]
    if importlib.util.find_spec("wandb_workspaces"):
        model = json.loads(wandb_report.to_wandb_report(spec, entity="", project="arcdist")._to_model()
                           .spec.model_dump_json(by_alias=True, exclude_none=True))
        block = next(b for b in model["blocks"] if b.get("type") == "panel-grid")["metadata"]
        assert block["panelBankSectionConfig"]["panels"][0]["config"]["groupBy"] == "row.value"


@pytest.mark.parametrize("case", ["missing", "no-grid-json", "wandb-group-offline"])
def test_bad_input_is_one_line_exit_2(tmp_path, case, monkeypatch, capsys):
    args = {"missing": [tmp_path / "nope"], "no-grid-json": [tmp_path],
            "wandb-group-offline": ["--wandb-group", "g", "--entity", "e", "--project", "p", "--timeout", "20",
                                    "--out", tmp_path / "pulled"]}[case]
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no W&B credentials (the real command: test_cli.py)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert report.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arcdist.report: error:"), err
    assert {"missing": "does not exist", "no-grid-json": "no grid.json",
            "wandb-group-offline": "W&B credentials"}[case] in lines[0]


def test_a_folder_grid_shows_balanced_accuracy_after_the_final_accuracy():
    from arcdist.report.stats import balanced_cells, mean_std

    cells = {"variant": "A8", "final acc": "0.9000 ± 0.0000", "best acc": "0.9500 ± 0.0000"}
    row = dict(balanced_accuracy=mean_std([0.84, 0.86]))
    out = balanced_cells(cells, row)
    assert list(out) == ["variant", "final acc", "balanced acc", "best acc"]
    assert out["balanced acc"] == "0.8500 ± 0.0141"
    assert balanced_cells(cells, dict(balanced_accuracy=mean_std([None, None])))["balanced acc"] == "n/a"


def test_std_is_sample_std_and_na_with_one_seed():
    assert report.fmt(report.mean_std([0.5, 0.7, 0.9]), 3) == f"0.700 ± {statistics.stdev([0.5, 0.7, 0.9]):.3f}"
    assert report.fmt(report.mean_std([0.5, float("nan")]), 2) == "0.50 ± n/a"  # one finite value
    assert report.fmt(report.mean_std([]), 2) == "n/a"


def test_features_figure_scales_each_panel_to_its_own_points(tmp_path):
    """Variants whose features are 1000x smaller or larger than the rest (V1.2.3, V1.2.4 in the post's grid)
    are drawn whole, each filling its own panel, instead of as an empty or a one-dot panel."""
    rng, scales, rows = np.random.default_rng(0), (1e-3, 1.0, 1e3, 2.0), []
    for i, scale in enumerate(scales):
        run = tmp_path / f"v{i}-s0"
        run.mkdir()
        np.savez(run / "features.npz", features=rng.normal(0, scale, (200, 2)), labels=np.arange(200) % 10)
        rows.append(dict(label=f"v{i}", seeds=[0], run_dirs=[str(run)]))
    fig = report.draw_features(rows)
    assert len(fig.axes) == len(scales)
    for ax in fig.axes:
        pts = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])
        assert len(pts) == 200
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert ((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)).all(), ax.get_title()
        assert np.abs(pts).max() >= 0.9 * min(x1, y1), ax.get_title()  # the farthest point is near the edge
    report.plt.close(fig)


@pytest.mark.slow
def test_losses_grid_report_has_a_row_and_a_panel_per_head(tmp_path):
    from arcdist.variants import LOSS_VARIANTS, VARIANTS

    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=60)
    grid_dir = tmp_path / "runs" / "losses"
    jobs = []  # the runs a `--variants losses` grid trains (its runner: tests/test_grid.py), forked in this process
    for i, v in enumerate(LOSS_VARIANTS):
        run_train([*TINY, "--variant", v, "--epochs", "1", "--data-dir", str(data), "--output-dir",
                   str(grid_dir / f"{v}-s0"), "--set", "data.batch_size=64", *T0_BACKBONE])
        jobs.append(dict(index=i, variant=v, seed=0, dataset="mnist", run_dir=str(grid_dir / f"{v}-s0"),
                         status="finished"))
    (grid_dir / "grid.json").write_text(json.dumps(dict(grid_id="losses", jobs=jobs)))
    summary = report.build_report(grid_dir)
    kinds = [VARIANTS[v].config.head.kind for v in LOSS_VARIANTS]
    assert [r["head"] for r in summary["losses"]] == kinds == \
        ["softmax", "normface", "sphereface", "cosface", "arcface", "combined", "center"]
    for row, v in zip(summary["losses"], LOSS_VARIANTS):
        acc = json.loads((grid_dir / f"{v}-s0" / "summary.json").read_text())["final_accuracy"]
        assert row["variant"] == v and row["final acc"] == f"{acc:.4f} ± n/a"
    md = (grid_dir / "report" / "report.md").read_text()
    assert md.count("## Losses side by side") == 1 and all(f"| {k} | L-{k} |" in md for k in kinds)
    fig = report.draw_features(report.summarise(report.load_grid(grid_dir), 0.97, 20.0))
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 7 and [ax.get_title().split()[0] for ax in panels] == list(LOSS_VARIANTS)
    regions = [ax for ax in panels if ax.images]  # decision regions behind softmax and center only
    assert [ax.get_title().split()[0] for ax in regions] == ["L-softmax", "L-center"]


def test_losses_table_says_whether_a_difference_exceeds_the_seed_noise():
    def row(head, accs):
        return dict(head=head, label=f"L-{head}", head_settings="", seeds=list(range(len(accs))), n_jobs=len(accs),
                    final_accuracy=report.mean_std(accs), intra_spread_deg=report.mean_std([1.0] * len(accs)),
                    min_centre_angle_deg=report.mean_std([30.0] * len(accs)), diverged_seeds=0)

    soft = row("softmax", [0.990, 0.992, 0.991])  # mean 0.991, std 0.001
    far, near = row("arcface", [0.995, 0.996, 0.997]), row("cosface", [0.990, 0.993, 0.993])
    # noise = 2 sqrt(0.001^2/3 + 0.001^2/3) = 0.0016: +0.0050 beyond; cosface (std 0.00173): 2 sqrt(3e-6/3 + 1e-6/3) = 0.0023
    assert report.loss_row(far, soft)["acc - softmax"] == "+0.0050 (noise 0.0016: beyond)"
    assert report.loss_row(near, soft)["acc - softmax"] == "+0.0010 (noise 0.0023: within)"
    assert report.loss_row(soft, soft)["acc - softmax"] == "-"
    assert report.loss_row(row("center", [0.99]), soft)["acc - softmax"] == "n/a"


def _blobs(spacing: float, sigma: float, seed: int = 0):
    """Ten Gaussian blobs (sigma per axis) whose means sit on a circle, adjacent means `spacing` apart."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.arange(10) * (2 * math.pi / 10)
    radius = spacing / (2 * math.sin(math.pi / 10))
    means = radius * torch.stack([angle.cos(), angle.sin()], 1)
    labels = torch.arange(10).repeat_interleave(200)
    return means[labels] + sigma * torch.randn(len(labels), 2, generator=g), labels


def _verdict_row(head: str, features, labels) -> dict:
    from arcdist.evaluation.metrics import separation_metrics

    m = separation_metrics(features, labels, torch.eye(2).repeat(5, 1))
    stat = lambda v: dict(mean=v, std=None, n=1, values=[v])  # noqa: E731
    return dict(head=head, diverged_seeds=0, final_accuracy=stat(0.99), min_mean_gap=stat(m["min_mean_gap"]),
                min_centre_angle_deg=stat(m["min_centre_angle_deg"]))


def test_center_loss_is_judged_by_position_and_the_angular_heads_by_angle():
    """Center loss pulls classes to points: blobs 10 sigma apart are 'separated' whatever the angle between their
    mean directions; blobs 1 sigma apart 'overlap'. An angular head with the same features keeps the angle rule."""
    from arcdist.evaluation.metrics import mean_gap

    apart, labels = _blobs(spacing=10.0, sigma=1.0)
    close, _ = _blobs(spacing=1.0, sigma=1.0)
    # the RMS radius of a 2-D Gaussian is sigma sqrt(2): gap = spacing / (2 sqrt(2) sigma)
    assert mean_gap(apart, labels, 10) == pytest.approx(10 / (2 * math.sqrt(2)), rel=0.08)
    assert mean_gap(close, labels, 10) < 0.5  # 0.35 expected; the smallest of 45 noisy pairs lies below it
    assert report.measured_verdict(_verdict_row("center", apart, labels), 0.97, 20.0) == "separated"
    assert report.measured_verdict(_verdict_row("center", close, labels), 0.97, 20.0) == "overlap"
    # shifted far from the origin, the separated blobs' mean directions are a few degrees apart: the angle rule
    # (right for rays from the origin) would call them overlapping; the position rule does not move
    shifted = apart + torch.tensor([200.0, 0.0])
    row = _verdict_row("center", shifted, labels)
    assert row["min_centre_angle_deg"]["mean"] < 5.0
    assert report.measured_verdict(row, 0.97, 20.0) == "separated"
    assert report.measured_verdict(dict(row, head="arcface"), 0.97, 20.0) == "overlap"
    assert report.measured_verdict(dict(row, head="softmax"), 0.97, 20.0) == "overlap"


def test_a_sweeps_rows_are_apart_and_each_is_judged_against_the_first(grid, tmp_path):
    """A grid of one variant swept over two values (the fixture's V2 and V2.1 runs stand in for them): a row per
    setting, labelled and 'what changed' by it, and an 'acc - <first row>' column whose difference and noise equal
    the runs' own figures (twice the standard error of the difference)."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    jobs = [dict(index=i, variant="V2", seed=s, dataset="mnist", run_dir=str(grid["grid"] / f"{v}-s{s}"),
                 status="finished", sets=[f"head.margin={m}"])
            for i, (v, m, s) in enumerate((v, m, s) for v, m in zip(VARIANTS, ("0.2", "0.5")) for s in SEEDS)]
    (sweep / "grid.json").write_text(json.dumps(dict(grid_id="sw", sweeps=["head.margin=0.2,0.5"], jobs=jobs)))
    summary = report.build_report(sweep, out=tmp_path / "out")
    rows = summary["variants"]
    assert [r["variant"] for r in rows] == ["V2", "V2"] and [r["sets"] for r in rows] == [["head.margin=0.2"],
                                                                                           ["head.margin=0.5"]]
    assert [r["display"]["variant"] for r in rows] == ["V2 head.margin=0.2", "V2 head.margin=0.5"]
    assert rows[1]["changed"].endswith("; head.margin=0.5")
    acc = [[json.loads(line)["test_accuracy"] for line in (grid["grid"] / f"{v}-s{s}" / "metrics.jsonl")
            .read_text().splitlines()][-1] for v in VARIANTS for s in SEEDS]
    a, b = acc[:2], acc[2:]
    diff = statistics.mean(b) - statistics.mean(a)
    noise = 2 * math.sqrt(statistics.variance(a) / 2 + statistics.variance(b) / 2)
    column = "acc - V2 head.margin=0.2"
    assert rows[0]["display"][column] == "-"
    assert rows[1]["display"][column] == f"{diff:+.4f} (noise {noise:.4f}: {'beyond' if abs(diff) > noise else 'within'})"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "sweeps: head.margin=0.2,0.5" in md and "| V2 head.margin=0.5 |" in md


@pytest.mark.parametrize("flag, value, says", [("--threshold-acc", "97", "a fraction in [0, 1]"),
                                               ("--threshold-acc", "nan", "a fraction in [0, 1]"),
                                               ("--threshold-angle", "-5", "0 or more"),
                                               ("--timeout", "0", "more than 0 seconds")])
def test_report_thresholds_out_of_range_are_one_line(flag, value, says, capsys):
    """97 (a percentage) made every row "never" and "overlap" without a word; a timeout of 0 failed every call."""
    from arcdist.report.cli import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["g", flag, value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and f"{flag} {value}: expected {says}" in lines[0], lines


@pytest.mark.parametrize("env, says", [(dict(WANDB_MODE="bogus"), "WANDB_MODE=bogus: expected one of online"),
                                       (dict(WANDB_MODE="offline", ARCDIST_WANDB_INIT_TIMEOUT="abc"),
                                        "ARCDIST_WANDB_INIT_TIMEOUT=abc: expected seconds above 0")])
def test_a_bad_wandb_setting_is_refused_before_anything_is_written(monkeypatch, env, says):
    """A pydantic traceback (WANDB_MODE) or a ValueError (the timeout), raised after the run folder was made, before."""
    from arcdist import tracking
    from arcdist.config import ConfigError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=re.escape(says)):
        tracking.resolve_mode(None)
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    monkeypatch.setenv("ARCDIST_WANDB_INIT_TIMEOUT", "30")
    assert tracking.resolve_mode(None) == "disabled" and tracking.resolve_mode("offline") == "offline"
