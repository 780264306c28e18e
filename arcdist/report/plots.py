"""The report's figures: accuracy and loss curves over epochs, and every variant's final 2-D features."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from arcdist import figures, runinfo
from arcdist.figures import plt
from arcdist.palette import class_colours, class_count, legend_rule, scatter_classes, unseen_classes
from arcdist.report.stats import _finite

def curves_figure(rows: list[dict], key: str, ylabel: str, path: Path) -> Path:
    """One line per variant: `key` per epoch, mean over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colours = class_colours(len(rows))
    for i, row in enumerate(rows):
        curve = row["curves"][key]
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, label=row["label"], color=colours[i])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ylabel} (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def last_features(run_dir: Path) -> dict | None:
    """features/labels of the run's last epoch: features.npz, else the newest features/test-epoch-*.npz."""
    path = Path(run_dir) / "features.npz"
    if not path.exists():
        files = figures.feature_files(run_dir)
        path = files[max(files)] if files else None
    return dict(np.load(path)) if path else None


def features_figure(rows: list[dict], path: Path) -> Path:
    """The post's raw 2-D plots of every variant (lowest seed, last epoch), one subplot each, written to `path`."""
    fig = draw_features(rows)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_features(rows: list[dict]):
    """The features figure: each panel scaled to its own points (square, centred on 0), so a variant whose
    features are 1000x larger or smaller than the others' is still drawn whole rather than as an empty panel."""
    panels = []
    for row in rows:
        order = sorted(zip(row["seeds"], row["run_dirs"]))
        found = next(((s, d, f) for s, d in order if (f := last_features(Path(d))) is not None), None)
        panels.append((row, found))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    height = 3.4 * nrows + 0.5
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, height), dpi=100, squeeze=False)
    for ax, (row, found) in zip(axes.flat, panels):
        if found is None:
            ax.set_title(f"{row['label']}: no features", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        seed, run_dir, f = found
        acc = runinfo.read_summary(Path(run_dir)).get("final_accuracy")
        points = figures.extent_points(f)
        finite = np.isfinite(points).all(axis=1)
        span = float(np.abs(points[finite]).max()) if finite.any() else 0.0
        limit = span * 1.05 if span > 0 else 1.0
        geometry = figures.head_geometry(f)
        names = figures.class_names(Path(run_dir))
        n = class_count(f["labels"], geometry.get("W"), names, geometry.get("rows"))
        figures.draw_head(ax, geometry, limit, n)
        scatter_classes(ax, f["features"][:, :2], f["labels"], n, names, unseen_classes(n, geometry.get("rows")), s=2)
        ax.set_title(f"{row['label']} s{seed}  acc {acc:.4f}" if _finite(acc) else f"{row['label']} s{seed}",
                     fontsize=9)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.text(0.02, 0.02, f"max |x| {span:.3g}" + ("" if finite.all() else f", {(~finite).sum()} non-finite points"),
                transform=ax.transAxes, fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.collections), ([], []))
    if handles and legend_rule(len(handles)).show:
        fig.legend(handles, labels, loc="lower center", ncol=10, markerscale=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))
    return fig
