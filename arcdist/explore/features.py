"""What the explorer page stores: each run's features over the epochs, read, checked, sampled, predicted and
quantised; the test images as one sprite; the same rows as a W&B table."""
from __future__ import annotations

import base64
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcdist import runinfo
from arcdist.directions import margin_caps, margin_zones


DEFAULT_POINTS = 2000
DEFAULT_MAX_MB = 20.0
SPRITE_COLS = 100
THUMB = 32  # pixels: a tooltip image larger than this is decoded at this size (the sprite stays small)
MISSING = 65535  # 16-bit code of a non-finite coordinate (plotly skips the NaN it decodes to)
SAMPLE_SEED = 0  # the same points in every panel and every build
WANDB_TABLE_ROWS = DEFAULT_POINTS  # the page's sample of each epoch (10,000 rows cost 0.7 s an epoch to build and log)


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
    classes: tuple[str, ...] = ()  # a folder dataset's recorded class names
    channels: int = 1  # a folder run's images as it read them: channels, size, and how its test split was held out
    image_size: int = 28
    test_fraction: float = 0.2
    dim: int = 2  # the feature size (above 3: drawn through a projection)
    projection: str = ""  # its caption
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
    if (feats.ndim != 2 or feats.shape[1] < 2 or labels.shape != (len(feats),) or W.ndim != 2
            or W.shape[1] != feats.shape[1]):
        raise ExploreError(f"{path}: expected features (N, D), labels (N,) and W (C, D) with D >= 2, got "
                           f"{feats.shape}, {labels.shape} and {W.shape}")
    return every_class(d) if "rows" in d else d


def every_class(d: dict) -> dict:
    """A run trained on some classes only (its W row r is class rows[r]): the predictions made by its own rows, then
    W, b and centers spread to one row per class, zero (b: -1e30) for the unseen classes, which `unseen` lists."""
    rows = np.asarray(d["rows"], np.int64)
    n = int(max(d["labels"].max(initial=-1), rows.max())) + 1
    out = dict(d, pred=predictions(d["features"], d), unseen=np.setdiff1d(np.arange(n), rows))
    for key, fill in (("W", 0.0), ("b", -1e30), ("centers", 0.0)):
        if key in d:
            full = np.full((n, *np.shape(d[key])[1:]), fill, dtype=np.float64)
            full[rows] = d[key]
            out[key] = full
    del out["rows"]
    return out


def to_view(d: dict, proj: dict | None) -> dict:
    """A features file as the page draws it: 2-D or 3-D as saved; d > 3 through the run's projection onto 3 axes
    (arcdist.sphere_figures), with each point's angle to its class direction measured in all d dimensions first."""
    if d["features"].shape[1] <= 3:
        return d
    from arcdist.sphere_figures import to_3d

    out = dict(d, ang=angles_to_class(d["features"], d["labels"], d["W"]),
               pred=d["pred"] if "pred" in d else predictions(d["features"], d))
    out["features"] = to_3d(d["features"], proj)
    out["W"] = to_3d(d["W"], proj, centre=False)
    if "centers" in d:
        out["centers"] = to_3d(d["centers"], proj)
    return out


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
    data_cfg, model_cfg = config.get("data", {}), config.get("model", {})
    series = Series(name or run_dir.name, run_dir, data_cfg.get("dataset", "mnist"), data_cfg.get("data_dir"),
                    classes=tuple(data_cfg.get("classes") or ()), channels=model_cfg.get("in_channels", 1),
                    image_size=model_cfg.get("image_size", 28), test_fraction=data_cfg.get("test_fraction", 0.2),
                    accuracy=accuracy)
    first, proj = None, None
    for epoch, path in files.items():
        d = _load_npz(path)
        if first is None:
            first = (path, d["labels"])
            series.dim = d["features"].shape[1]
            if series.dim > 3:
                from arcdist.sphere_figures import fit_projection, projection_caption

                saved = run_dir / "features" / "projection.npz"
                proj = dict(np.load(saved)) if saved.is_file() else fit_projection(d["features"])
                series.projection = projection_caption(proj, series.dim)
        elif d["labels"].shape != first[1].shape or not np.array_equal(d["labels"], first[1]):
            raise ExploreError(f"{path}: its labels differ from {first[0].name}'s; the folder mixes two runs")
        elif d["features"].shape[1] != series.dim:
            raise ExploreError(f"{path}: {d['features'].shape[1]}-D features, {first[0].name} has {series.dim}-D; "
                               "the folder mixes two runs")
        series.epochs[epoch] = to_view(d, proj)
    return series


def predictions(features: np.ndarray, geometry: dict) -> np.ndarray:
    """The predicted class of each saved feature by the head's rule (arcdist.heads.predicted_labels)."""
    from arcdist.heads import predicted_labels

    return predicted_labels(np.asarray(features, np.float32), geometry).numpy().astype(np.int64)


def angles_to_class(features: np.ndarray, labels: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Degrees between each feature and its own class direction W_y (nan for a zero feature)."""
    w = W[labels].astype(np.float64)
    x = features.astype(np.float64)
    norm = np.linalg.norm(x, axis=1) * np.linalg.norm(w, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.degrees(np.arccos(np.clip((x * w).sum(1) / norm, -1.0, 1.0)))


def feature_rows(features: np.ndarray, labels: np.ndarray, geometry: dict, epoch: int) -> list[list]:
    """One epoch's test features as rows (x, y, [z for 3-D,] label, prediction, epoch), at most WANDB_TABLE_ROWS of
    them (the same seeded sample as the page's)."""
    features, labels = np.asarray(features, np.float32), np.asarray(labels)
    pred = predictions(features, geometry)
    index = sample_points(len(labels), WANDB_TABLE_ROWS)
    k = 3 if features.shape[1] == 3 else 2
    return [[*(float(v) for v in features[i, :k]), int(labels[i]), int(pred[i]), int(epoch)] for i in index]


def table_columns(dim: int) -> list[str]:
    """The W&B table's columns for `dim`-D features (z only for 3-D; above, the page's projection is the view)."""
    return ["x", "y", "z", "label", "prediction", "epoch"] if dim == 3 else list(TABLE_COLUMNS)


def wandb_table(features, labels, geometry: dict, epoch: int):
    """The rows of `feature_rows` as a wandb.Table, for W&B's own scatter panels (x against y, coloured by label)."""
    import wandb

    geometry = {k: np.asarray(v) for k, v in geometry.items()}
    return wandb.Table(columns=table_columns(np.asarray(features).shape[1]),
                       data=feature_rows(np.asarray(features), np.asarray(labels),
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
    labels = next(iter(series.epochs.values()))["labels"]
    try:
        if series.dataset == "folder":  # as the run read it (channels, split), at most THUMB px: the sample only
            from arcdist.datasets.folder import ImageFolderDataset, decode_all

            ds = ImageFolderDataset(folder, channels=series.channels, image_size=min(series.image_size, THUMB),
                                    test_fraction=series.test_fraction)
            test_y = ds.test.labels
            images = lambda: decode_all(tuple(ds.test.paths[i] for i in index.tolist()), ds.decode)
        else:
            splits = load_dataset(series.dataset, folder, download=False)
            test_y, images = splits.test_y, lambda: splits.test_x[:len(labels)][index]
        if len(test_y) < len(labels) or not np.array_equal(test_y[:len(labels)].numpy(), labels):
            return None, f"the {series.dataset} test labels in {folder} do not match {series.name}'s features"
        return images().numpy(), ""
    except Exception as e:  # noqa: BLE001 - any reason: the page is still useful without images
        return None, f"no test images for {series.dataset} in {folder} ({str(e).splitlines()[0]})"


# --- the page -----------------------------------------------------------------------------------------
@dataclass
class Panel:
    title: str
    series: int  # index into the page's series
    view: str = "raw"  # "raw" / "circle" (2-D: the features, normalised onto the unit circle); "raw3d" / "sphere"


def find_panels(folder: Path) -> tuple[list[Series], list[Panel], str]:
    """A run folder: its raw and unit-circle views; a grid folder: one raw panel per run with features."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExploreError(f"{folder} does not exist; pass a run folder (--output-dir of arcdist/train.py) or a "
                           "grid folder (OUT/GRID_ID of `python -m arcdist.grid`)")
    if (folder / "features").is_dir():
        s = read_series(folder)
        if s.dim > 2:
            return [s], [Panel(f"{s.name}: raw features", 0, "raw3d"), Panel(f"{s.name}: unit sphere", 0, "sphere")], \
                s.name
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
        return (series, [Panel(s.name, i, "raw3d" if s.dim > 2 else "raw") for i, s in enumerate(series)],
                doc.get("grid_id") or folder.name)
    raise ExploreError(f"{folder} has neither features/ nor grid.json; pass a run folder (--output-dir of "
                       "arcdist/train.py) or a grid folder (OUT/GRID_ID of `python -m arcdist.grid`)")


def epoch_payload(d: dict, index: np.ndarray, accuracy: float | None) -> dict:
    """One epoch of one run as the page stores it: coordinates and predictions as 16-bit codes, geometry."""
    feats = d["features"][index].astype(np.float64)
    codes, lo, hi = zip(*(quantise(feats[:, k]) for k in range(feats.shape[1])))
    geometry = {k: d[k] for k in ("W", "b", "centers", "sub_centers") if k in d}
    pred = d["pred"] if "pred" in d else predictions(d["features"], geometry)
    out = dict(xy=_b64(np.stack(codes, 1).ravel()), lo=list(lo), hi=list(hi),
               pred=_b64(pred[index].astype(np.uint16)), W=np.asarray(d["W"], float).tolist(),
               margin=float(d.get("margin", 0.0)), caption=str(d.get("caption", "")),
               acc=float((pred == d["labels"])[~np.isin(d["labels"], d.get("unseen", []))].mean()),
               limit=_finite_limit(_extent(d)))
    for k in ("b", "centers"):
        if k in d:
            out[k] = np.asarray(d[k], float).tolist()
    W = np.asarray(d["W"], float)
    seen = np.flatnonzero(np.abs(W).sum(1) > 0)  # an unseen class's row is zero: no direction, no sector or cap
    if W.shape[1] == 2 and out["margin"] > 0:  # the circle's sectors where the margin is met (arcdist.figures)
        zones = np.zeros((len(W), 2))
        zones[seen] = np.radians(margin_zones(np.degrees(np.arctan2(W[seen, 1], W[seen, 0])),
                                              np.degrees(out["margin"])))
        out["zones"] = zones.tolist()
    if W.shape[1] == 3 and out["margin"] > 0 and "ang" not in d:  # true 3-D (no projection): the sphere's caps
        caps = np.zeros(len(W))
        caps[seen] = margin_caps(W[seen], out["margin"])
        out["caps"] = caps.tolist()
    if "unseen" in d:  # classes the run never trained on: drawn in their own marker, no direction
        out["unseen"] = np.asarray(d["unseen"]).tolist()
    if "ang" in d:  # d > 3: the angles of all d dimensions, in hundredths of a degree
        out["ang"] = _b64(np.rint(np.nan_to_num(d["ang"][index], nan=0.0) * 100).astype(np.uint16))
    if accuracy is not None:
        out["logged_acc"] = accuracy
    return out


def _extent(d: dict) -> np.ndarray:
    return np.concatenate([d["features"], d["centers"]]) if "centers" in d else d["features"]


def estimate_bytes(n_series: int, n_epochs: int, n_points: int, dims: int = 2) -> int:
    """Bytes of the stored epochs: per point a 16-bit code per coordinate and a 16-bit prediction, base64, plus
    geometry."""
    return int(n_series * n_epochs * (n_points * (2 * dims + 2) * 4 / 3 + 1200))
