"""Feature plots above 2-D (matplotlib, headless): 3-D features on the unit sphere, d > 3 through a fixed projection.

    plots/<split>-sphere-epoch-NNNN.png   normalised features on the unit sphere, two views (front and back), the
                                          class directions W and, for the angular heads, the cap around each inside
                                          which the margin is met (arcdist.directions.margin_caps)
    plots/<split>-raw-epoch-NNNN.png      the raw features in 3-D, one view

d > 3: every epoch is drawn through one projection onto 3 axes, the PCA of the first saved test epoch's features
(fitted once per run, kept in features/projection.npz so re-renders and later epochs share it); the caption
names it and the share of the variance it keeps. Margin caps are drawn only where the features are 3-D (a
projection does not keep angles).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from arcdist.directions import margin_caps
from arcdist.palette import (add_legend, class_count, dense, row_colours, scatter_classes, unseen_classes,
                             use_installed_fonts)

use_installed_fonts()

PROJECTION = "projection.npz"
VIEWS = ((20.0, 35.0), (-20.0, 215.0))  # (elevation, azimuth) degrees: the front and the back of the sphere


def fit_projection(features: np.ndarray) -> dict[str, np.ndarray]:
    """PCA onto 3 axes: mean (d,), components (3, d), explained (3,) variance fractions."""
    x = np.asarray(features, np.float64)
    x = x[np.isfinite(x).all(1)]
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2
    return dict(mean=mean, components=vt[:3], explained=var[:3] / var.sum())


def projection_for(run_dir: Path, first_test_features: np.ndarray) -> dict[str, np.ndarray]:
    """The run's projection: read from features/projection.npz, or fitted on `first_test_features` and saved."""
    path = Path(run_dir) / "features" / PROJECTION
    if path.is_file():
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files}
    proj = fit_projection(first_test_features)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **proj)
    tmp.replace(path)
    return proj


def to_3d(points: np.ndarray, proj: dict | None, centre: bool = True) -> np.ndarray:
    """3-D points: as they are (d = 3), or projected (d > 3; directions such as W without the mean shift)."""
    points = np.asarray(points, np.float64)
    if proj is None or points.shape[1] == 3:
        return points
    return ((points - proj["mean"]) if centre else points) @ proj["components"].T


def projection_caption(proj: dict | None, dim: int) -> str:
    if proj is None:
        return ""
    kept = 100 * float(np.sum(proj["explained"]))
    return f"PCA of epoch-1 test features: 3 of {dim} dims, {kept:.0f} % of the variance"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def cap_circle(w: np.ndarray, radius: float, n: int = 48) -> np.ndarray:
    """Points (n, 3) on the unit sphere at angle `radius` (radians) around the direction w."""
    w = _unit(np.asarray(w, np.float64))
    a = np.cross(w, [1.0, 0, 0] if abs(w[0]) < 0.9 else [0, 1.0, 0])
    a = _unit(a)
    b = np.cross(w, a)
    t = np.linspace(0, 2 * math.pi, n)
    return math.cos(radius) * w + math.sin(radius) * (np.cos(t)[:, None] * a + np.sin(t)[:, None] * b)


def sphere_figure(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, margin: float, title: str,
                  caption: str = "", colours: list[str] | None = None, class_names: list[str] | None = None,
                  caps: bool = True, rows: np.ndarray | None = None) -> Figure:
    """Normalised 3-D features on the unit sphere in two views, with W directions and the cap around each inside
    which the margin is met (`arcdist.directions.margin_caps`; none where it cannot be) (`rows`: the
    class of each row of W, for a run trained on some classes only; the others are drawn as unseen)."""
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    n = class_count(labels, weight, class_names, rows)
    colours = colours or row_colours(n, rows, len(weight))
    unit = _unit(np.asarray(features, np.float64))
    w = _unit(np.asarray(weight, np.float64))
    fig = Figure(figsize=(10, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    u, v = np.mgrid[0:2 * math.pi:25j, 0:math.pi:13j]
    rings = []  # (the ring, its colour) of each class whose cap is not empty: the same in both views
    if caps and margin > 0 and not dense(len(w)):
        rings = [(cap_circle(w[c], r), colours[c]) for c, r in enumerate(margin_caps(w, margin)) if r > 0]
    for k, (elev, azim) in enumerate(VIEWS):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
        scatter_classes(ax, unit, labels, n, class_names, unseen_classes(n, rows), s=2, depthshade=False)
        start = 1.05 if dense(len(w)) else 0.0
        ax.add_collection3d(Line3DCollection(np.stack([start * w, 1.3 * w], axis=1), colors=colours, lw=1.6))
        if rings:
            ax.add_collection3d(Line3DCollection([r for r, _ in rings], colors=[c for _, c in rings], lw=1.0))
        ax.view_init(elev=elev, azim=azim)
        ax.set_box_aspect((1, 1, 1))
        for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            setter(-1.1, 1.1)
        ax.set_axis_off()
        ax.set_title(f"view {'front' if k == 0 else 'back'} (elev {elev:.0f}, azim {azim:.0f})", fontsize=9)
        if k == 1:
            add_legend(ax, n, markerscale=4)
    fig.suptitle(f"{title}\n{caption}", fontsize=10)
    fig.tight_layout()
    return fig


def raw3d_figure(features: np.ndarray, labels: np.ndarray, limit: float, title: str, caption: str = "",
                 class_names: list[str] | None = None, centers: np.ndarray | None = None, rows=None) -> Figure:
    """The raw 3-D features, one colour per class, axes [-limit, limit]^3; center loss's `centers` as crosses in
    their class's colour (as in 2-D)."""
    fig = Figure(figsize=(5.6, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    n = class_count(labels, names=class_names)
    scatter_classes(ax, features, labels, n, class_names, s=2, depthshade=False)
    if centers is not None:
        ax.scatter(*centers.T, marker="X", s=60, c=row_colours(n, rows, len(centers)), edgecolors="black",
                   linewidths=0.8, depthshade=False)
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-limit, limit)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(*VIEWS[0])
    add_legend(ax, n, markerscale=4)
    ax.set_title(f"{title}\n{caption}" if caption else title, fontsize=10)
    fig.tight_layout()
    return fig
