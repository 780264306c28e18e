"""Feature plots from saved features (matplotlib, headless). Never imported by the training step. Features above
2-D are drawn on the sphere instead of the circle (arcdist.sphere_figures).

Per epoch, for the test set (and the fixed training sample when saved):
  plots/<split>-raw-epoch-NNNN.png     the post's figure: raw 2-D features, one colour per class, over the head's
                                       decision regions (softmax, center loss: and its centers) or class directions
  plots/<split>-circle-epoch-NNNN.png  normalised features on the unit circle, W directions, where the margin is met
  plots/test-raw.gif                   the raw plots over the epochs, axes fixed for the whole run
`python -m arcdist.plot RUN_DIR` re-renders all of it from RUN_DIR/features/.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.collections import LineCollection, PatchCollection  # noqa: E402
from matplotlib.patches import Wedge  # noqa: E402

from arcdist import directions  # noqa: E402
from arcdist.palette import (add_legend, class_colours, class_count, dense, row_colours,  # noqa: E402
                             scatter_classes, unseen_classes, use_installed_fonts)

use_installed_fonts()

COLOURS = class_colours(10)  # ten classes' colours (tab10), the same in every run
_NAME = re.compile(r"(test|train)-epoch-(\d{4})\.npz$")


def feature_files(run_dir: Path, split: str = "test") -> dict[int, Path]:
    """Saved feature files of one split by epoch."""
    out = {}
    for path in (Path(run_dir) / "features").glob(f"{split}-epoch-*.npz"):
        m = _NAME.search(path.name)
        if m:
            out[int(m.group(2))] = path
    return dict(sorted(out.items()))


def extent_points(saved) -> np.ndarray:
    """What the raw plot must hold: the features, and the head's centers where it has them."""
    return np.concatenate([saved["features"], saved["centers"]]) if "centers" in saved else saved["features"]


def axis_limit(paths: list[Path]) -> float:
    """Half-width of square axes that hold every feature of every given epoch."""
    lim = max((float(np.abs(extent_points(np.load(p))).max()) for p in paths), default=1.0)
    return lim * 1.05 if math.isfinite(lim) and lim > 0 else 1.0


def head_geometry(saved) -> dict[str, np.ndarray]:
    """The head's W, b and centers from a features file (older files hold W only)."""
    return {k: np.asarray(saved[k]) for k in ("W", "b", "centers", "rows") if k in saved}


def draw_head(ax, geometry: dict[str, np.ndarray], limit: float, n: int | None = None) -> None:
    """Behind the points: a linear head's decision regions (softmax, center: argmax W x + b) and its centers, or an
    angular head's class directions W as rays from the origin; each in its class's colour among `n` classes (W's
    `rows` say which class each row is, for a run trained on some classes only)."""
    W = geometry.get("W")
    if W is None or W.shape[1] != 2:
        return
    rows = geometry.get("rows")
    colours = row_colours(n or class_count(weight=W, rows=rows), rows, len(W))
    if "b" in geometry:
        t = np.linspace(-limit, limit, 300)
        gx, gy = np.meshgrid(t, t)
        region = (np.stack([gx.ravel(), gy.ravel()], 1) @ W.T + geometry["b"]).argmax(1).reshape(gx.shape)
        ax.imshow(region, extent=(-limit, limit, -limit, limit), origin="lower", alpha=0.13, zorder=0,
                  cmap=matplotlib.colors.ListedColormap(colours), vmin=-0.5, vmax=len(W) - 0.5,
                  interpolation="nearest", aspect="auto")
    elif not dense(len(W)):
        draw_rays(ax, W, colours, limit * 1.5, lw=0.8, ls="--", zorder=0)
    if "centers" in geometry:
        ax.scatter(geometry["centers"][:, 0], geometry["centers"][:, 1], marker="X", s=60, c=colours,
                   edgecolors="black", linewidths=0.8, zorder=3)


def draw_rays(ax, weight: np.ndarray, colours: list[str], length: float, start: float = 0.0, **kwargs) -> None:
    """Each row of W as a ray from `start` to `length` from the origin, in its class's colour (one collection)."""
    u = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
    segments = np.stack([start * u, length * u], axis=1)
    ax.add_collection(LineCollection(segments, colors=colours, **kwargs))


def raw_figure(features: np.ndarray, labels: np.ndarray, limit: float, title: str,
               class_names: list[str] | None = None, geometry: dict[str, np.ndarray] | None = None) -> Figure:
    """The post's plot: every feature as a point coloured by its class, axes [-limit, limit]^2, with the head's
    decision regions or class directions behind them when `geometry` is given."""
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=100)
    rows = (geometry or {}).get("rows")
    n = class_count(labels, (geometry or {}).get("W"), class_names, rows)
    if geometry:
        draw_head(ax, geometry, limit, n)
    scatter_classes(ax, features, labels, n, class_names, unseen_classes(n, rows), s=2)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    add_legend(ax, n, markerscale=4)
    fig.tight_layout()
    return fig


def circle_figure(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, margin: float, title: str,
                  caption: str = "", class_names: list[str] | None = None, rows: np.ndarray | None = None) -> Figure:
    """Features projected onto the unit circle, each class direction W_c and the sector around it where the margin
    is met (`arcdist.directions.margin_zones`; none where it is wider than the gaps, said on the figure) (`rows`:
    the class of each row of W, for a run trained on some classes only; the others are drawn as unseen). Above
    20 rows W is a ring of ticks outside the circle, without wedges (`palette.dense`).

    `caption` names the head and its margin (features saved before captions existed: the margin in degrees)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    n = class_count(labels, weight, class_names, rows)
    colours = row_colours(n, rows, len(weight))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.7", lw=0.8))
    if dense(len(weight)):
        draw_rays(ax, weight, colours, 1.25, start=1.08, lw=1.0)
    else:
        if margin > 0:
            zones = directions.margin_zones(np.degrees(np.arctan2(weight[:, 1], weight[:, 0])), math.degrees(margin))
            caps = [(Wedge((0, 0), 1.25, lo, hi), c) for (lo, hi), c in zip(zones, colours) if hi > lo]
            if caps:
                ax.add_collection(PatchCollection([w for w, _ in caps], facecolors=[c for _, c in caps], alpha=0.15,
                                                  linewidths=0))
            else:
                ax.text(0.5, 0.02, "the margin is met nowhere: wider than the gap between neighbouring directions",
                        transform=ax.transAxes, ha="center", fontsize=7, color="0.4")
        draw_rays(ax, weight, colours, 1.25, lw=1.5)
    scatter_classes(ax, unit, labels, n, class_names, unseen_classes(n, rows), s=3)
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.set_title(f"{title}\n{caption or f'W directions, margin {math.degrees(margin):.1f} deg'}", fontsize=10)
    add_legend(ax, n, markerscale=3)
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def class_names(run_dir: Path) -> list[str] | None:
    """The run's class names: a folder dataset's recorded ones, else its dataset's (None: unknown, digits)."""
    import json

    from arcdist.datasets import DATASETS

    try:
        data = json.loads((Path(run_dir) / "config.json").read_text()).get("config", {}).get("data", {})
    except (OSError, ValueError):
        return None
    if data.get("classes"):
        return [str(c) for c in data["classes"]]
    cls = DATASETS.get(data.get("dataset", "mnist"))
    return list(cls.spec.classes) if cls is not None and cls.spec.classes else None


def _projection(run_dir: Path, dim: int):
    """None for 3-D features; the run's fixed projection for d > 3 (arcdist.sphere_figures)."""
    from arcdist.sphere_figures import projection_for

    if dim == 3:
        return None
    first = next(iter(feature_files(run_dir, "test").values()))
    return projection_for(run_dir, np.load(first)["features"])


def render_3d(run_dir: Path, split: str, epoch: int, limit: float, d, title: str) -> dict[str, Path]:
    """Features above 2-D: the sphere (two views) and the raw 3-D plot (d > 3: through the run's projection)."""
    from arcdist import sphere_figures as sf

    out, dim = run_dir / "plots", d["features"].shape[1]
    proj = _projection(run_dir, dim)
    feats, W = sf.to_3d(d["features"], proj), sf.to_3d(d["W"], proj, centre=False)
    names = class_names(run_dir)
    caption = " / ".join(t for t in (str(d["caption"]) if "caption" in d else "", sf.projection_caption(proj, dim)) if t)
    centers = sf.to_3d(d["centers"], proj) if "centers" in d else None
    if proj is not None:
        limit = float(np.abs(feats if centers is None else np.concatenate([feats, centers])).max()) * 1.05 or 1.0
    return {
        f"{split}_raw": _save(sf.raw3d_figure(feats, d["labels"], limit, title, sf.projection_caption(proj, dim),
                                              names, centers, d.get("rows")), out / f"{split}-raw-epoch-{epoch:04d}.png"),
        f"{split}_sphere": _save(sf.sphere_figure(feats, d["labels"], W, float(d["margin"]), title, caption,
                                                  class_names=names, caps=proj is None, rows=d.get("rows")),
                                 out / f"{split}-sphere-epoch-{epoch:04d}.png"),
    }


def render(run_dir: Path, split: str, epoch: int, limit: float) -> dict[str, Path]:
    """Both plots of one split at one epoch; returns {name: png path}."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    d = np.load(feature_files(run_dir, split)[epoch])
    title = f"{run_dir.name}  {split}  epoch {epoch}  ({len(d['labels']):,} points)"
    if d["features"].shape[1] > 2:
        return render_3d(run_dir, split, epoch, limit, d, title)
    names = class_names(run_dir)
    return {
        f"{split}_raw": _save(raw_figure(d["features"], d["labels"], limit, title, names, geometry=head_geometry(d)),
                              out / f"{split}-raw-epoch-{epoch:04d}.png"),
        f"{split}_circle": _save(circle_figure(d["features"], d["labels"], d["W"], float(d["margin"]), title,
                                               str(d["caption"]) if "caption" in d else "", names,
                                               d.get("rows")),
                                 out / f"{split}-circle-epoch-{epoch:04d}.png"),
    }


def render_epoch(run_dir: Path, epoch: int) -> dict[str, Path]:
    """During training: the epoch's plots, axes as wide as every epoch so far needs (they only grow)."""
    images = {}
    for split in ("test", "train"):
        files = feature_files(run_dir, split)
        if epoch in files:
            images.update(render(run_dir, split, epoch, axis_limit(list(files.values()))))
    return images


def render_gif(run_dir: Path, split: str = "test", frame_ms: int = 400) -> Path | None:
    """One frame per epoch of the raw plot, axes fixed for the whole run, re-rendered from the features."""
    from PIL import Image

    files = feature_files(run_dir, split)
    if not files:
        return None
    limit = axis_limit(list(files.values()))
    frames = []
    for epoch, path in files.items():
        d = np.load(path)
        title = f"{Path(run_dir).name}  {split}  epoch {epoch}"
        dim = d["features"].shape[1]
        if dim > 2:
            from arcdist import sphere_figures as sf

            proj = _projection(Path(run_dir), dim)
            centers = sf.to_3d(d["centers"], proj) if "centers" in d else None
            fig = sf.raw3d_figure(sf.to_3d(d["features"], proj), d["labels"], limit, title, centers=centers,
                                  rows=d.get("rows"))
        else:
            fig = raw_figure(d["features"], d["labels"], limit, title)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB"))
        plt.close(fig)
    out = Path(run_dir) / "plots" / f"{split}-raw.gif"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    tmp.replace(out)
    return out


def render_all(run_dir: Path) -> list[Path]:
    """Every epoch's plots and the GIF, with axes fixed over the whole run."""
    written = []
    for split in ("test", "train"):
        files = feature_files(run_dir, split)
        limit = axis_limit(list(files.values()))
        for epoch in files:
            written += render(run_dir, split, epoch, limit).values()
    gif = render_gif(run_dir)
    return written + ([gif] if gif else [])
