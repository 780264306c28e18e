"""One colour per class and one legend rule, for every figure: plots, sphere figures, the report and the explorer.

- Colours: matplotlib's tab10 up to 10 classes (the colours every ten-class figure has always had), tab20 up to
  20, then C evenly spaced hues around the colour circle (saturation 0.75, value 0.9) (neighbouring labels get neighbouring hues;
  with hundreds of classes colour no longer names a class, the position on the circle does).
- Legend: one entry per class up to `LEGEND_MAX` classes, in one column up to 10 and two up to 20; above that no
  per-class legend (it would hide the figure) but a one-line note of the class count in its place.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# a class name in a script no installed font has draws as boxes; matplotlib would warn twice per figure per glyph,
# every epoch (the explorer's page shows the names in the browser's fonts)
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
# fonts a figure falls back to, glyph by glyph, after matplotlib's DejaVu Sans, where installed: class names in
# Chinese, Japanese, Korean, Arabic, Hebrew, Devanagari, Thai (Linux's packages, then macOS's and Windows's)
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans", "Droid Sans Fallback",
                  "WenQuanYi Zen Hei", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Thai",
                  "Noto Sans", "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Microsoft YaHei", "Malgun Gothic",
                  "Arial Unicode MS")


def use_installed_fonts() -> list[str]:
    """Set matplotlib's font family to DejaVu Sans then every installed FALLBACK_FONTS entry (matplotlib takes each
    glyph from the first font that has it); returns the family list."""
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    family = ["DejaVu Sans", *(f for f in FALLBACK_FONTS if f in installed)]
    matplotlib.rcParams["font.family"] = family
    return family

LEGEND_MAX = 20  # classes named in a legend; above this a figure says "N classes" instead


def class_colours(n: int) -> list[str]:
    """`n` colours as '#rrggbb', the same for the same `n` in every figure."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb, to_hex

    if n <= 10:
        return [to_hex(c) for c in colormaps["tab10"].colors[:n]]
    if n <= 20:
        return [to_hex(c) for c in colormaps["tab20"].colors[:n]]
    return [to_hex(hsv_to_rgb((i / n, 0.75, 0.9))) for i in range(n)]  # (not a 256-entry colormap: n hues)


def class_names(n: int, names: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The run's class names, or the labels as text ("0", "1", ...) where it has none or too few."""
    names = list(names or ())
    return names if len(names) >= n else [*names, *(str(i) for i in range(len(names), n))]


@dataclass(frozen=True)
class Legend:
    """How a figure of `n` classes shows which colour is which."""

    show: bool  # one entry per class
    columns: int
    note: str  # in place of the legend (empty when it is shown)


def dense(rows: int) -> bool:
    """More rows of W than a legend names: rays from the origin would cover the disc (1,000 of them fill it), so
    the circle and sphere draw W as ticks outside the unit circle or sphere, without margin caps, and the raw plot
    leaves W out (its points are coloured by class already)."""
    return rows > LEGEND_MAX


def legend_rule(n: int) -> Legend:
    if n <= LEGEND_MAX:
        return Legend(True, 1 if n <= 10 else 2, "")
    return Legend(False, 0, f"{n} classes (colours by label, cyclic)")


def add_legend(ax, n: int, **kwargs) -> None:
    """`ax.legend(...)` by the rule, or the rule's note in the axes' corner."""
    rule = legend_rule(n)
    if rule.show:
        ax.legend(ncol=rule.columns, **{"loc": "upper right", "fontsize": 7, "framealpha": 0.8, **kwargs})
    else:
        text = getattr(ax, "text2D", ax.text)  # (a 3-D axes' text() wants a z)
        text(0.99, 0.99, rule.note, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")


def class_count(labels: np.ndarray | None = None, weight: np.ndarray | None = None, names: list[str] | None = None,
                rows: np.ndarray | None = None) -> int:
    """The classes a figure draws: the most of the names, the labels (largest + 1) and W's rows (the largest class
    they stand for + 1, where `rows` says)."""
    heads = 0 if weight is None else (len(weight) if rows is None else int(np.max(rows)) + 1)
    return max(len(names or ()), int(np.max(labels)) + 1 if labels is not None and len(labels) else 0, heads)


def row_colours(n: int, rows=None, count: int | None = None) -> list[str]:
    """The colours of a head's W rows among `n` classes: row r is class rows[r] (a run trained on some classes
    only), else class r of `count` rows."""
    colours = class_colours(n)
    return [colours[int(r)] for r in (range(count if count is not None else n) if rows is None else rows)]


def unseen_classes(n: int, rows=None) -> set[int]:
    """The classes of `n` that no W row stands for (never trained on)."""
    return set() if rows is None else set(range(n)) - {int(r) for r in rows}


def scatter_classes(ax, points: np.ndarray, labels: np.ndarray, n: int, names: list[str] | None = None,
                    unseen: set[int] = frozenset(), **kwargs) -> None:
    """Points coloured by class (palette.class_colours): one collection and legend entry per class while the legend
    rule names classes, else one collection coloured per point. Classes in `unseen` (never trained on) are drawn
    as triangles ("(unseen)" in the legend). `points` is (N, 2) or (N, 3)."""
    colours, names = class_colours(n), class_names(n, names)
    style = dict(linewidths=0, rasterized=True, **kwargs)
    if legend_rule(n).show:
        for c in range(n):
            mark = dict(marker="^", label=f"{names[c]} (unseen)") if c in unseen else dict(label=names[c])
            ax.scatter(*points[labels == c].T, c=colours[c], **mark, **style)
    else:
        keep = (labels >= 0) & (labels < n)
        away = np.isin(labels, sorted(unseen)) & keep
        ax.scatter(*points[keep & ~away].T, c=[colours[k] for k in labels[keep & ~away]], **style)
        if away.any():
            ax.scatter(*points[away].T, c=[colours[k] for k in labels[away]], marker="^", **style)
