"""Interactive 2-D feature explorer: one self-contained HTML page for a run folder or a grid folder.

    python -m arcdist.explore runs/A7-s0                  # -> runs/A7-s0/explore.html: raw and unit-circle panels
    python -m arcdist.explore runs/losses                 # -> runs/losses/report/explore.html: one panel per run
    python -m arcdist.explore runs/losses --every 5 --points 5000 --out /tmp/losses.html

Panels side by side share an epoch slider with play/pause; each panel draws its head's geometry of that epoch
(class directions W, margin wedges, decision regions of W x + b, center loss's centers) on its own axes. Hovering a
point shows the test image, its label, the prediction and its angle to its class direction; misclassified points are
drawn as crosses; clicking a class in the legend hides it in every panel. The page is plotly (plotly.js embedded, no
network): features are stored per epoch as 16-bit codes over that epoch's range, predictions as bytes, and the
images once as a PNG sprite, so that a 12-run grid of 100 epochs fits the default 20 MB (`--max-mb`).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import math
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcdist import runinfo
from arcdist.cli import ArgumentParser

DEFAULT_POINTS = 2000
DEFAULT_MAX_MB = 20.0
SPRITE_COLS = 100
MISSING = 65535  # 16-bit code of a non-finite coordinate (plotly skips the NaN it decodes to)
SAMPLE_SEED = 0  # the same points in every panel and every build
WANDB_TABLE_ROWS = 10_000  # W&B's row limit for a logged table


class ExploreError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --- reading features ---------------------------------------------------------------------------------
@dataclass
class Series:
    """One run's test features over the epochs (every epoch loaded, `points` of them kept)."""

    name: str
    run_dir: Path
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> features, labels, W, b, centers, margin, caption
    accuracy: dict[int, float] = field(default_factory=dict)  # metrics.jsonl's test accuracy per epoch


def _load_npz(path: Path) -> dict:
    """One features file as plain arrays; a torn or foreign file is an ExploreError naming it."""
    try:
        with np.load(path) as saved:
            d = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ExploreError(f"{path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                           "the file is torn: rerun `arcdist/train.py --resume` for a run that stopped, or delete "
                           "the run folder and train it again") from None
    feats, labels, W = d.get("features"), d.get("labels"), d.get("W")
    if feats is None or labels is None or W is None:
        missing = [k for k in ("features", "labels", "W") if k not in d]
        raise ExploreError(f"{path} has no {', '.join(missing)}; it is not a features file written by arcdist")
    if feats.ndim != 2 or feats.shape[1] != 2 or labels.shape != (len(feats),) or W.ndim != 2 or W.shape[1] != 2:
        raise ExploreError(f"{path}: expected 2-D features (N, 2), labels (N,) and W (C, 2), got "
                           f"{feats.shape}, {labels.shape} and {W.shape}")
    return d


def read_series(run_dir: Path, name: str | None = None) -> Series:
    """Every test-features file of a run, checked: no epoch missing between 1 and the last one (nor any epoch that
    metrics.jsonl evaluated), every file whole, the same labels in every epoch."""
    from arcdist import figures

    run_dir = Path(run_dir)
    files = figures.feature_files(run_dir, "test")
    if not files:
        raise ExploreError(f"{run_dir / 'features'} holds no test-epoch-NNNN.npz; pass a run folder of "
                           "arcdist/train.py (or a grid folder) that has finished at least one epoch")
    rows = runinfo.read_metrics(run_dir)
    accuracy = {r["epoch"]: r["test_accuracy"] for r in rows if "test_accuracy" in r}
    for epoch in sorted(set(range(1, max(files) + 1)) | set(accuracy)):
        if epoch not in files:
            raise ExploreError(f"{run_dir / 'features' / f'test-epoch-{epoch:04d}.npz'} is missing (epoch {epoch} "
                               f"of {max(files)}); the features folder is incomplete: rerun `python -m arcdist.explore` "
                               "after the run has been resumed, or train it again")
    config = {}
    if (run_dir / runinfo.CONFIG).is_file():
        try:
            config = json.loads((run_dir / runinfo.CONFIG).read_text()).get("config", {})
        except json.JSONDecodeError:
            config = {}
    data_cfg = config.get("data", {})
    series = Series(name or run_dir.name, run_dir, data_cfg.get("dataset", "mnist"), data_cfg.get("data_dir"),
                    accuracy=accuracy)
    first = None
    for epoch, path in files.items():
        d = _load_npz(path)
        if first is None:
            first = (path, d["labels"])
        elif d["labels"].shape != first[1].shape or not np.array_equal(d["labels"], first[1]):
            raise ExploreError(f"{path}: its labels differ from {first[0].name}'s; the folder mixes two runs")
        series.epochs[epoch] = d
    return series


def predictions(features: np.ndarray, geometry: dict) -> np.ndarray:
    """The head's prediction rule on saved features: argmax W x + b where the head has b (softmax, center), else the
    largest cosine to W (the angular heads; SphereFace's |x| cos is the same argmax), in fp32 as the metrics do."""
    import torch
    import torch.nn.functional as F

    from arcdist.heads import cosines

    x, W = torch.as_tensor(np.asarray(features, np.float32)), torch.as_tensor(np.asarray(geometry["W"], np.float32))
    if geometry.get("b") is not None:
        scores = F.linear(x, W, torch.as_tensor(np.asarray(geometry["b"], np.float32)))
    else:
        scores = cosines(x, W)
    return scores.argmax(1).numpy().astype(np.int64)


def angles_to_class(features: np.ndarray, labels: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Degrees between each feature and its own class direction W_y (nan for a zero feature)."""
    w = W[labels].astype(np.float64)
    x = features.astype(np.float64)
    norm = np.linalg.norm(x, axis=1) * np.linalg.norm(w, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.degrees(np.arccos(np.clip((x * w).sum(1) / norm, -1.0, 1.0)))


def table_rows(features: np.ndarray, labels: np.ndarray, geometry: dict, epoch: int) -> list[list]:
    """One epoch's test features as rows (x, y, label, prediction, epoch), at most WANDB_TABLE_ROWS of them
    (the same seeded sample as the page's)."""
    features, labels = np.asarray(features, np.float32), np.asarray(labels)
    pred = predictions(features, geometry)
    index = sample_points(len(labels), WANDB_TABLE_ROWS)
    return [[float(features[i, 0]), float(features[i, 1]), int(labels[i]), int(pred[i]), int(epoch)] for i in index]


def wandb_table(features, labels, geometry: dict, epoch: int):
    """The rows of `table_rows` as a wandb.Table, for W&B's own scatter panels (x against y, coloured by label)."""
    import wandb

    geometry = {k: np.asarray(v) for k, v in geometry.items()}
    return wandb.Table(columns=list(TABLE_COLUMNS), data=table_rows(np.asarray(features), np.asarray(labels),
                                                                    geometry, epoch))


TABLE_COLUMNS = ("x", "y", "label", "prediction", "epoch")


# --- choosing what goes on the page -------------------------------------------------------------------
def sample_points(n: int, points: int) -> np.ndarray:
    """`points` of the n test rows (all when points is 0 or >= n): a seeded random sample, in dataset order."""
    if points <= 0 or points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SAMPLE_SEED).permutation(n)[:points])


def pick_epochs(epochs: list[int], every: int) -> list[int]:
    """The first and the last epoch and every multiple of `every` in between."""
    if not epochs:
        return []
    return sorted({epochs[0], epochs[-1], *(e for e in epochs if e % every == 0)})


def quantise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit codes of one coordinate over its finite range [lo, hi] (error at most (hi - lo) / 131068); a non-finite
    value gets MISSING."""
    finite = np.isfinite(values)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    step = (hi - lo) / (MISSING - 1) if hi > lo else 1.0
    codes = np.full(values.shape, MISSING, np.uint16)
    codes[finite] = np.clip(np.rint((values[finite] - lo) / step), 0, MISSING - 1).astype(np.uint16)
    return codes, lo, hi


def dequantise(codes: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What the page draws from `quantise`'s codes (the page's own decoder does the same in JavaScript)."""
    out = lo + codes.astype(np.float64) * ((hi - lo) / (MISSING - 1))
    out[codes == MISSING] = np.nan
    return out


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _finite_limit(points: np.ndarray) -> float:
    finite = points[np.isfinite(points).all(axis=1)] if len(points) else points
    span = float(np.abs(finite).max()) if len(finite) else 0.0
    return span * 1.05 if span > 0 and math.isfinite(span) else 1.0


def sprite(images: np.ndarray) -> str:
    """The given (N, C, H, W) uint8 images in one PNG, SPRITE_COLS per row, as a data URI."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = min(SPRITE_COLS, n)
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        sheet[r * h:(r + 1) * h, k * w:(k + 1) * w] = img.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(sheet[..., 0] if c == 1 else sheet).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_images(series: Series, data_dir: str | None, index: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The test images behind `index` (the features are the test split in dataset order), or None and why not."""
    from arcdist.data import load_dataset, resolve_data_dir

    folder = data_dir or series.data_dir or resolve_data_dir(None)
    try:
        splits = load_dataset(series.dataset, folder, download=False)
    except Exception as e:  # noqa: BLE001 - any reason: the page is still useful without images
        return None, f"no test images for {series.dataset} in {folder} ({str(e).splitlines()[0]})"
    labels = next(iter(series.epochs.values()))["labels"]
    if len(splits.test_y) < len(labels) or not np.array_equal(splits.test_y[:len(labels)].numpy(), labels):
        return None, f"the {series.dataset} test labels in {folder} do not match {series.name}'s features"
    return splits.test_x[:len(labels)][index].numpy(), ""


# --- the page -----------------------------------------------------------------------------------------
@dataclass
class Panel:
    title: str
    series: int  # index into the page's series
    view: str = "raw"  # "raw" (the features) or "circle" (normalised onto the unit circle)


def find_panels(folder: Path) -> tuple[list[Series], list[Panel], str]:
    """A run folder: its raw and unit-circle views; a grid folder: one raw panel per run with features."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExploreError(f"{folder} does not exist; pass a run folder (--output-dir of arcdist/train.py) or a "
                           "grid folder (OUT/GRID_ID of `python -m arcdist.grid`)")
    if (folder / "features").is_dir():
        s = read_series(folder)
        return [s], [Panel(f"{s.name}: raw features", 0), Panel(f"{s.name}: unit circle", 0, "circle")], s.name
    if (folder / "grid.json").is_file():
        from arcdist.report import ReportError, load_grid

        try:
            doc = load_grid(folder)
        except ReportError as e:
            raise ExploreError(str(e)) from None
        series = [read_series(Path(j["run_dir"])) for j in doc["jobs"] if (Path(j["run_dir"]) / "features").is_dir()]
        if not series:
            raise ExploreError(f"no run of {folder} has a features/ folder yet; run `python -m arcdist.grid` first")
        return series, [Panel(s.name, i) for i, s in enumerate(series)], doc.get("grid_id") or folder.name
    raise ExploreError(f"{folder} has neither features/ nor grid.json; pass a run folder (--output-dir of "
                       "arcdist/train.py) or a grid folder (OUT/GRID_ID of `python -m arcdist.grid`)")


def epoch_payload(d: dict, index: np.ndarray, accuracy: float | None) -> dict:
    """One epoch of one run as the page stores it: coordinates as 16-bit codes, predictions as bytes, geometry."""
    feats = d["features"][index].astype(np.float64)
    qx, lox, hix = quantise(feats[:, 0])
    qy, loy, hiy = quantise(feats[:, 1])
    geometry = {k: d[k] for k in ("W", "b", "centers") if k in d}
    pred = predictions(d["features"], geometry)
    out = dict(xy=_b64(np.stack([qx, qy], 1).ravel()), lo=[lox, loy], hi=[hix, hiy],
               pred=_b64(pred[index].astype(np.uint8)), W=np.asarray(d["W"], float).tolist(),
               margin=float(d.get("margin", 0.0)), caption=str(d.get("caption", "")),
               acc=float((pred == d["labels"]).mean()), limit=_finite_limit(_extent(d)))
    for k in ("b", "centers"):
        if k in d:
            out[k] = np.asarray(d[k], float).tolist()
    if accuracy is not None:
        out["logged_acc"] = accuracy
    return out


def _extent(d: dict) -> np.ndarray:
    return np.concatenate([d["features"], d["centers"]]) if "centers" in d else d["features"]


def estimate_bytes(n_series: int, n_epochs: int, n_points: int) -> int:
    """Bytes of the stored epochs: 5 bytes per point (two 16-bit codes and a prediction), base64, plus geometry."""
    return int(n_series * n_epochs * (n_points * 5 * 4 / 3 + 1200))


def build_page(folder: Path, out: Path | None = None, every: int | None = None, points: int = DEFAULT_POINTS,
               max_mb: float = DEFAULT_MAX_MB, data_dir: str | None = None) -> dict:
    """Write the page; returns what it holds (path, panels, epochs, points, bytes, warnings)."""
    import plotly
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from arcdist.data import DATASETS
    from arcdist.figures import COLOURS

    folder = Path(folder)
    series, panels, title = find_panels(folder)
    out = Path(out) if out else (folder / "explore.html" if (folder / "features").is_dir()
                                 else folder / "report" / "explore.html")
    warnings = []
    # the sample: one per distinct test-set size, shared by every run of that size (and its images with it)
    sources: dict[tuple[str, int], dict] = {}
    source_of = []
    for s in series:
        n = len(next(iter(s.epochs.values()))["labels"])
        key = (s.dataset, n)
        if key not in sources:
            index = sample_points(n, points)
            images, why = load_images(s, data_dir, index)
            if why:
                warnings.append(why + "; the tooltips show no image")
            labels = next(iter(s.epochs.values()))["labels"][index]
            src = dict(index=index, n=n, labels=labels, images=images)
            sources[key] = src
        source_of.append(list(sources).index(key))
    all_epochs = sorted({e for s in series for e in s.epochs})
    js_plotly = len(plotly.offline.get_plotlyjs())
    n_points = max(len(src["index"]) for src in sources.values())
    sprites = {k: (sprite(src["images"]) if src["images"] is not None else None) for k, src in sources.items()}
    fixed = js_plotly + sum(len(v or "") for v in sprites.values()) + 60_000
    if every is None:  # the smallest step that fits the budget (the first and last epoch are always kept)
        every = 1
        while (every < max(all_epochs) and fixed + estimate_bytes(len(series), len(pick_epochs(all_epochs, every)),
                                                                  n_points) > max_mb * 1e6):
            every += 1
    chosen = pick_epochs(all_epochs, every)
    payload_series = []
    for s, src_i in zip(series, source_of):
        src = list(sources.values())[src_i]
        limit = max(_finite_limit(_extent(s.epochs[e])) / 1.05 for e in chosen if e in s.epochs) * 1.05
        payload_series.append(dict(
            name=s.name, src=src_i, limit=limit,
            epochs={str(e): epoch_payload(s.epochs[e], src["index"], s.accuracy.get(e)) for e in chosen
                    if e in s.epochs}))
    spec = DATASETS.get(series[0].dataset)
    classes = list(spec.classes) if spec else [str(c) for c in range(10)]
    n_classes = max(len(s.epochs[max(s.epochs)]["W"]) for s in series)
    classes += [str(c) for c in range(len(classes), n_classes)]
    colours = [COLOURS[c % len(COLOURS)] for c in range(n_classes)]
    data = dict(
        title=title, epochs=chosen, all_epochs=len(all_epochs), every=every, classes=classes, colours=colours,
        sources=[dict(index=_b64(src["index"].astype(np.uint32)), labels=_b64(src["labels"].astype(np.uint8)),
                      n=src["n"], sprite=sprites[k], cols=SPRITE_COLS,
                      size=(list(src["images"].shape[2:]) if src["images"] is not None else [28, 28]))
                 for k, src in sources.items()],
        series=payload_series, panels=[dict(title=p.title, series=p.series, view=p.view) for p in panels],
        warnings=warnings)

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels],
                        horizontal_spacing=0.05, vertical_spacing=0.12 / rows)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        # decision regions (filled in for heads with b), one trace per class, the centers
        fig.add_trace(go.Heatmap(z=[[None]], showscale=False, hoverinfo="skip", opacity=0.13, zmin=-0.5,
                                 zmax=n_classes - 0.5, colorscale=_discrete(colours), meta=dict(panel=i, role="regions")),
                      row=r + 1, col=c + 1)
        for k in range(n_classes):
            fig.add_trace(go.Scattergl(x=[], y=[], mode="markers", name=classes[k], legendgroup=str(k),
                                       showlegend=i == 0, hoverinfo="none", marker=dict(color=colours[k], size=4),
                                       meta=dict(panel=i, role="class", cls=k)), row=r + 1, col=c + 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="centers", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="x", size=11, color=colours, line=dict(color="black", width=1)),
                                 meta=dict(panel=i, role="centers")), row=r + 1, col=c + 1)
        axis = "" if i == 0 else str(i + 1)
        fig.layout[f"yaxis{axis}"].update(scaleanchor=f"x{axis}", scaleratio=1, constrain="domain")
        fig.layout[f"xaxis{axis}"].update(constrain="domain")
    side = 360 if len(panels) > 2 else 480
    fig.update_layout(height=rows * side + 90, width=max(cols * side + 160, 800), margin=dict(l=40, r=130, t=60, b=30),
                      plot_bgcolor="white", legend=dict(title=dict(text="class (click to hide)"), itemsizing="constant"),
                      uirevision="keep", hovermode="closest", hoverdistance=6, dragmode="zoom")
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    page = fig.to_html(include_plotlyjs=True, full_html=True, div_id="explorer", auto_play=False,
                       config=dict(displaylogo=False, responsive=False))
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    head = (f"<title>arcdist explorer: {_esc(title)}</title><style>{CSS}</style>")
    page = page.replace("<head>", "<head>" + head, 1)
    controls = CONTROLS.format(title=_esc(title), n=len(chosen), every=every, total=len(all_epochs),
                               points=n_points, warnings="".join(f"<p class=warn>{_esc(w)}</p>" for w in warnings))
    page = page.replace("<body>", "<body>" + controls, 1)
    page = page.replace("</body>", f'<script type="application/json" id="arcdist-data">{blob}</script>'
                                   f"<script>{SCRIPT}</script></body>", 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    runinfo.atomic_write(out, page)
    return dict(path=out, panels=len(panels), epochs=chosen, all_epochs=len(all_epochs), every=every,
                points=n_points, bytes=out.stat().st_size, warnings=warnings)


def _discrete(colours: list[str]) -> list:
    """A colorscale of flat steps, one per class (z = class index, zmin -0.5, zmax C - 0.5)."""
    n = len(colours)
    return [item for k, c in enumerate(colours) for item in ([k / n, c], [(k + 1) / n, c])]


def _esc(text: str) -> str:
    import html

    return html.escape(str(text))


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:12px 16px;color:#222;background:#fff}
#bar{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:4px 0 8px}#epoch{width:420px}
#epoch-label{font-variant-numeric:tabular-nums;min-width:9em}.note{color:#555;margin:2px 0}.warn{color:#a40}
#tip{position:fixed;display:none;pointer-events:none;background:#fff;border:1px solid #888;border-radius:4px;
padding:6px;font-size:12px;box-shadow:0 2px 6px rgba(0,0,0,.25);z-index:10;display:none;gap:8px;align-items:center}
#tip-img{width:56px;height:56px;image-rendering:pixelated;background-repeat:no-repeat;border:1px solid #ddd}
.wrong{color:#c00;font-weight:bold}"""

CONTROLS = """<h2 style="margin:4px 0">arcdist explorer: {title}</h2>
<p class="note">{points:,} test points per panel; {n} of {total} epochs (every {every}, first and last kept).
Hover a point for its image; crosses are misclassified; click a class in the legend to hide it in every panel;
each panel has its own axes.</p>{warnings}
<div id="bar"><button id="play" type="button">&#9654; play</button>
<input id="epoch" type="range" min="0" max="0" step="1" value="0" aria-label="epoch">
<span id="epoch-label"></span>
<label><input id="fit" type="checkbox"> fit the axes to each epoch</label></div>
<div id="tip"><div id="tip-img"></div><div id="tip-text"></div></div>"""

SCRIPT = r"""
(function () {
  const D = JSON.parse(document.getElementById('arcdist-data').textContent);
  const gd = document.getElementById('explorer');
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const u16 = (s) => { const b = bytes(s); return new Uint16Array(b.buffer, b.byteOffset, b.length / 2); };
  const u32 = (s) => { const b = bytes(s); return new Uint32Array(b.buffer, b.byteOffset, b.length / 4); };
  const sources = D.sources.map((s) => ({...s, index: u32(s.index), labels: bytes(s.labels)}));
  const cache = {};
  // one epoch of one run, decoded: x, y (NaN where not finite), predictions, angle to the class direction (deg)
  function decode(si, e) {
    const key = si + ':' + e;
    if (cache[key]) return cache[key];
    const ep = D.series[si].epochs[e];
    if (!ep) return null;
    const q = u16(ep.xy), pred = bytes(ep.pred), src = sources[D.series[si].src], n = src.labels.length;
    const x = new Float64Array(n), y = new Float64Array(n), ang = new Float64Array(n);
    const sx = ep.hi[0] > ep.lo[0] ? (ep.hi[0] - ep.lo[0]) / 65534 : 0;
    const sy = ep.hi[1] > ep.lo[1] ? (ep.hi[1] - ep.lo[1]) / 65534 : 0;
    for (let i = 0; i < n; i++) {
      const a = q[2 * i], b = q[2 * i + 1];
      x[i] = a === 65535 ? NaN : ep.lo[0] + a * sx;
      y[i] = b === 65535 ? NaN : ep.lo[1] + b * sy;
      const w = ep.W[src.labels[i]];
      const c = (x[i] * w[0] + y[i] * w[1]) / (Math.hypot(x[i], y[i]) * Math.hypot(w[0], w[1]));
      ang[i] = Math.acos(Math.max(-1, Math.min(1, c))) * 180 / Math.PI;
    }
    return (cache[key] = {x, y, pred, ang, ep});
  }
  // the run's newest stored epoch at or before e (a run that stopped early keeps its last picture)
  function epochOf(si, e) {
    let best = null;
    for (const k of Object.keys(D.series[si].epochs).map(Number)) if (k <= e && (best === null || k > best)) best = k;
    return best;
  }
  const traces = gd.data.map((t, i) => ({i, ...t.meta}));
  const C = D.classes.length;
  function sector(r, a0, a1) {
    let p = 'M 0 0';
    for (let k = 0; k <= 16; k++) { const a = a0 + (a1 - a0) * k / 16; p += ` L ${r * Math.cos(a)} ${r * Math.sin(a)}`; }
    return p + ' Z';
  }
  function render(idx) {
    const e = D.epochs[idx], fit = document.getElementById('fit').checked;
    const upd = {x: [], y: [], customdata: [], 'marker.symbol': [], 'marker.size': [], z: [], x0: [], dx: [], y0: [],
                 dy: []}, ids = [], layout = {shapes: []}, titles = [];
    D.panels.forEach((p, pi) => {
      const s = D.series[p.series], k = epochOf(p.series, e), d = k === null ? null : decode(p.series, k);
      const circle = p.view === 'circle', src = sources[s.src];
      const lim = circle ? 1.35 : (fit && d ? d.ep.limit : s.limit);
      const ax = pi === 0 ? '' : String(pi + 1);
      layout[`xaxis${ax}.range`] = [-lim, lim];
      layout[`yaxis${ax}.range`] = [-lim, lim];
      const acc = d ? ` acc ${(100 * d.ep.acc).toFixed(2)} %` : '';
      titles.push(`${p.title}  epoch ${k === null ? '-' : k}${acc}`);
      const W = d ? d.ep.W : [], margin = d ? d.ep.margin : 0, linear = d && d.ep.b;
      const r = circle ? 1.25 : lim * 1.5;
      W.forEach((w, c) => {
        const a = Math.atan2(w[1], w[0]), col = D.colours[c];
        if (margin > 0) layout.shapes.push({type: 'path', xref: `x${ax}`, yref: `y${ax}`, path: sector(r, a - margin, a + margin),
          fillcolor: col, opacity: 0.15, line: {width: 0}, layer: 'below'});
        if (!linear || circle) layout.shapes.push({type: 'line', xref: `x${ax}`, yref: `y${ax}`, x0: 0, y0: 0,
          x1: r * Math.cos(a), y1: r * Math.sin(a), line: {color: col, width: circle ? 1.5 : 1, dash: circle ? 'solid' : 'dash'},
          layer: 'below'});
      });
      if (circle) layout.shapes.push({type: 'circle', xref: `x${ax}`, yref: `y${ax}`, x0: -1, y0: -1, x1: 1, y1: 1,
        line: {color: '#bbb', width: 1}, layer: 'below'});
      for (const t of traces.filter((t) => t.panel === pi)) {
        ids.push(t.i);
        let xs = [], ys = [], cd = [], sym = [], size = [], z = null, x0 = null, dx = null;
        if (t.role === 'class' && d) {
          // the misclassified last: drawn on top, and the legend keeps the first point's symbol (a dot)
          const mine = [];
          for (let i = 0; i < src.labels.length; i++) if (src.labels[i] === t.cls) mine.push(i);
          mine.sort((a, b) => (d.pred[a] !== t.cls) - (d.pred[b] !== t.cls) || a - b);
          for (const i of mine) {
            let px = d.x[i], py = d.y[i];
            if (circle) { const nrm = Math.hypot(px, py) || 1; px /= nrm; py /= nrm; }
            const wrong = d.pred[i] !== t.cls;
            xs.push(px); ys.push(py); cd.push(i); sym.push(wrong ? 'x' : 'circle'); size.push(wrong ? 7 : 4);
          }
        } else if (t.role === 'centers' && d && d.ep.centers && !circle) {
          xs = d.ep.centers.map((c) => c[0]); ys = d.ep.centers.map((c) => c[1]);
        } else if (t.role === 'regions' && linear && !circle) {
          const m = 120, b = d.ep.b; z = [];
          dx = 2 * lim / m; x0 = -lim + dx / 2;
          for (let j = 0; j < m; j++) {
            const row = [], gy = x0 + j * dx;
            for (let i = 0; i < m; i++) {
              const gx = x0 + i * dx; let best = 0, bv = -Infinity;
              W.forEach((w, c) => { const v = w[0] * gx + w[1] * gy + b[c]; if (v > bv) { bv = v; best = c; } });
              row.push(best);
            }
            z.push(row);
          }
        }
        const heat = t.role === 'regions';  // a heatmap placed by x0/dx: no x or y arrays
        upd.x.push(heat ? null : xs); upd.y.push(heat ? null : ys); upd.customdata.push(heat ? null : cd); upd['marker.symbol'].push(t.role === 'class' ? sym : 'x');
        upd['marker.size'].push(t.role === 'class' ? size : 11);
        upd.z.push(z || [[null]]); upd.x0.push(x0 ?? 0); upd.dx.push(dx ?? 1); upd.y0.push(x0 ?? 0); upd.dy.push(dx ?? 1);
      }
    });
    (gd.layout.annotations || []).forEach((a, i) => { if (i < titles.length) layout[`annotations[${i}].text`] = titles[i]; });
    document.getElementById('epoch-label').textContent = `epoch ${e} (${idx + 1} of ${D.epochs.length})`;
    return Plotly.update(gd, upd, layout, ids).then(() => { document.body.dataset.epoch = String(e); });
  }
  const slider = document.getElementById('epoch'), play = document.getElementById('play');
  slider.max = String(D.epochs.length - 1);
  slider.value = String(D.epochs.length - 1);
  let busy = Promise.resolve(), timer = null;
  const show = () => { const i = Number(slider.value); busy = busy.then(() => render(i)); return busy; };
  slider.addEventListener('input', show);
  document.getElementById('fit').addEventListener('change', show);
  // play: the next epoch only once the last one is drawn (a slow machine skips nothing and queues nothing)
  const stop = () => { clearTimeout(timer); timer = null; play.innerHTML = '&#9654; play'; };
  const step = () => {
    if (!timer) return;
    if (Number(slider.value) >= D.epochs.length - 1) { stop(); return; }
    slider.value = String(Number(slider.value) + 1);
    show().then(() => { if (timer) timer = setTimeout(step, 300); });
  };
  play.addEventListener('click', () => {
    if (timer) { stop(); return; }
    if (Number(slider.value) >= D.epochs.length - 1) slider.value = '0';
    play.innerHTML = '&#10074;&#10074; pause';
    timer = -1;
    show().then(() => { if (timer) timer = setTimeout(step, 300); });
  });
  const tip = document.getElementById('tip');
  gd.on('plotly_hover', (ev) => {
    const pt = ev.points.find((q) => q.data.meta && q.data.meta.role === 'class');
    if (!pt) return;
    const p = D.panels[pt.data.meta.panel], s = D.series[p.series], src = sources[s.src];
    const d = decode(p.series, epochOf(p.series, Number(document.body.dataset.epoch)));
    const i = pt.customdata, label = src.labels[i], pred = d.pred[i];
    const img = document.getElementById('tip-img');
    if (src.sprite) {
      const [h, w] = src.size, k = 2, col = i % src.cols, row = Math.floor(i / src.cols);
      img.style.display = 'block';
      img.style.backgroundImage = `url(${src.sprite})`;
      img.style.backgroundSize = `${src.cols * w * k}px auto`;
      img.style.backgroundPosition = `-${col * w * k}px -${row * h * k}px`;
    } else img.style.display = 'none';
    const wrong = pred !== label ? ' class="wrong"' : '';
    document.getElementById('tip-text').innerHTML = `${s.name}, test image #${src.index[i]}<br>label ${D.classes[label]}` +
      `<br><span${wrong}>predicted ${D.classes[pred]}</span><br>${d.ang[i].toFixed(1)}° from W of ${D.classes[label]}`;
    const m = ev.event || {clientX: 0, clientY: 0};
    tip.style.left = `${m.clientX + 14}px`;
    tip.style.top = `${m.clientY + 14}px`;
    tip.style.display = 'flex';
  });
  gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
  window.arcdist = {data: D, render, decode, show};
  show().then(() => { document.body.dataset.ready = '1'; });
})();
"""


# --- command line -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist.explore", description=__doc__)
    p.add_argument("folder", help="a run folder (with features/) or a grid folder (with grid.json)")
    p.add_argument("--out", default=None, help="the page (default RUN_DIR/explore.html, GRID_DIR/report/explore.html)")
    p.add_argument("--every", type=int, default=None,
                   help="keep every Nth epoch (and the first and last); default: the smallest N within --max-mb")
    p.add_argument("--points", type=int, default=DEFAULT_POINTS,
                   help=f"test points per panel, a seeded sample (default {DEFAULT_POINTS}; 0: all)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                   help=f"page size the default --every aims for (default {DEFAULT_MAX_MB:g} MB)")
    p.add_argument("--data-dir", default=None,
                   help="where the test images are (default: the run's data dir, then $ARCDIST_DATA_DIR, ./data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.every is not None and args.every < 1:
            raise ExploreError(f"--every {args.every}: give a positive number of epochs")
        if args.points < 0:
            raise ExploreError(f"--points {args.points}: give a positive number, or 0 for all")
        info = build_page(Path(args.folder), args.out, args.every, args.points, args.max_mb, args.data_dir)
    except (ExploreError, OSError) as e:
        print(f"arcdist.explore: error: {e}", file=sys.stderr)
        return 2
    for w in info["warnings"]:
        print(f"arcdist.explore: warning: {w}", file=sys.stderr)
    print(f"explorer: {info['path']} ({info['panels']} panels, {len(info['epochs'])} of {info['all_epochs']} epochs, "
          f"{info['points']:,} points per panel, {info['bytes'] / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
