"""One palette and one legend rule for any class count: 2, 5, 20 and 1,000 classes in every figure kind."""
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from arcdist import directions, figures, palette, sphere_figures

COUNTS = [2, 5, 20, 1000]


def scatters(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def points(ax) -> int:
    return sum(len(c.get_offsets()) for c in scatters(ax))


def point_colours(ax) -> set[str]:
    return {to_hex(f) for c in scatters(ax) if len(c.get_offsets()) for f in c.get_facecolors()}


def legend_entries(ax) -> int:
    legend = ax.get_legend()
    return 0 if legend is None else len(legend.get_texts())


def note(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def classes(n, dim=2, per=3, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, dim))
    labels = np.repeat(np.arange(n), per)
    feats = W[labels] * 2 + 0.01 * rng.normal(size=(n * per, dim))
    return feats, labels, W


@pytest.mark.parametrize("n", COUNTS)
def test_colours_are_distinct_to_20_and_cyclic_above(n):
    colours = palette.class_colours(n)
    assert len(colours) == n and len(set(colours)) >= (n if n <= 20 else 0.9 * n)  # above 20: n hues, nearly all
    # distinct as 8-bit colours
    assert palette.class_colours(10) == [to_hex(c) for c in figures.plt.get_cmap("tab10").colors]
    rule = palette.legend_rule(n)
    assert rule.show == (n <= 20) and (rule.note == "" if n <= 20 else rule.note.startswith(f"{n} classes"))


@pytest.mark.parametrize("n", COUNTS)
def test_raw_and_circle_figures_draw_every_class_and_every_w(n):
    feats, labels, W = classes(n)
    names = [f"c{i}" for i in range(n)]
    for geometry in ({"W": W}, {"W": W, "b": np.zeros(n)}):
        fig = figures.raw_figure(feats, labels, 3.0, "t", names, geometry=geometry)
        ax = fig.axes[0]
        assert points(ax) == 3 * n and len(point_colours(ax)) == len(set(palette.class_colours(n)))
        assert legend_entries(ax) == (n if n <= 20 else 0)
        assert n <= 20 or note(ax).startswith(f"{n} classes")
        rays = sum(len(c.get_segments()) for c in ax.collections if type(c).__name__ == "LineCollection")
        assert rays == (n if n <= 20 and "b" not in geometry else 0)  # above 20 the points alone
        figures.plt.close(fig)
    fig = figures.circle_figure(feats, labels, W, 0.2, "t", "cap", names)
    ax = fig.axes[0]
    assert points(ax) == 3 * n and len(point_colours(ax)) == len(set(palette.class_colours(n)))
    segments = [s for c in ax.collections if hasattr(c, "get_segments") for s in c.get_segments()]
    wedges = sum(len(c.get_paths()) for c in ax.collections if type(c).__name__ == "PatchCollection") + \
        sum(type(p).__name__ == "Wedge" for p in ax.patches)
    assert len(segments) + len(ax.lines) == n  # W's direction of every class
    # up to 20 a ray from the origin and a sector where the margin is met each (random W: 4 of 20 classes have a
    # neighbour nearer than the margin on both sides); above, a tick outside the unit circle and no cap (1,000
    # rays from the origin fill the disc and hide the points)
    inner = {round(float(np.linalg.norm(s[0])), 6) for s in segments}
    met = sum(hi > lo for lo, hi in directions.margin_zones(np.degrees(np.arctan2(W[:, 1], W[:, 0])), np.degrees(0.2)))
    assert (inner, wedges) == (({0.0}, met) if n <= 20 else ({1.08}, 0)) and (n > 20 or met >= n - 4)
    assert legend_entries(ax) == (n if n <= 20 else 0)
    figures.plt.close(fig)


@pytest.mark.parametrize("angles,margin", [(np.arange(10) * 36.0, 0.2), (np.arange(10) * 36.0, 0.5),
                                          (np.arange(20) * 18.0, 0.2), (np.arange(20) * 18.0, 0.5),
                                          (np.array([0.0, 180.0]), 0.5), (np.array([5.0, 40.0, 200.0, 310.0]), 0.35),
                                          (np.array([10.0, 10.0, 100.0]), 0.1)])
def test_circle_shades_exactly_where_arcfaces_margin_is_met(angles, margin):
    """A point on the circle is inside its class's sector exactly when theta_y + m < theta_j for every other
    direction j, each angle an arccos of float64 cosines (the condition, not the sectors' formula)."""
    W = np.stack([np.cos(np.radians(angles)), np.sin(np.radians(angles))], 1)
    zones = directions.margin_zones(angles, np.degrees(margin))
    phi = np.radians(np.arange(0.0, 360.0, 0.05) + 0.025)  # off the sectors' edges
    theta = np.arccos(np.clip(np.stack([np.cos(phi), np.sin(phi)], 1) @ W.T, -1, 1))  # (points, directions)
    for y, (lo, hi) in enumerate(zones):
        met = np.all(np.delete(theta, y, 1) > theta[:, [y]] + margin, 1)
        inside = ((np.degrees(phi) - lo) % 360.0 < hi - lo) & (hi > lo)
        assert (inside == met).all(), (y, lo, hi)
    fig = figures.circle_figure(W * 2, np.arange(len(W)), W, margin, "t")
    wedges = [p for c in fig.axes[0].collections if type(c).__name__ == "PatchCollection" for p in c.get_paths()]
    met_anywhere = [hi > lo for lo, hi in zones]
    assert len(wedges) == sum(met_anywhere)
    assert ("met nowhere" in note(fig.axes[0])) == (not any(met_anywhere))
    figures.plt.close(fig)


def test_class_names_in_scripts_the_fonts_lack_draw_without_a_warning(tmp_path):
    """matplotlib warned twice per figure per missing glyph, every epoch, for a folder with CJK class names. In a
    process of its own: pytest drops the filters a module sets while it is collected."""
    import subprocess
    import sys

    code = ("import numpy as np; from arcdist import figures; "
            "fig = figures.raw_figure(np.eye(3, 2), np.arange(3), 3.0, 't', ['chat noir', 'Straße', '日本'], "
            "geometry={'W': np.eye(3, 2)}); fig.savefig(%r); "
            "print([t.get_text() for t in fig.axes[0].get_legend().get_texts()])" % str(tmp_path / "f.png"))
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "['chat noir', 'Straße', '日本']", proc.stderr
    assert "missing from font" not in proc.stderr and (tmp_path / "f.png").stat().st_size > 0


CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans", "Droid Sans Fallback", "WenQuanYi Zen Hei")


def test_class_names_in_chinese_and_japanese_draw_from_an_installed_font_not_as_boxes(tmp_path):
    """DejaVu Sans has no CJK glyphs: the legend drew boxes. An installed fallback font now gives them (matplotlib
    warns of every glyph no font in the family has, the warning palette otherwise silences)."""
    import subprocess
    import sys

    family = palette.use_installed_fonts()
    if not set(family) & set(CJK_FONTS):
        pytest.skip("no CJK font installed (.ci/system-deps installs Debian's fonts-droid-fallback)")
    code = ("import warnings, numpy as np; from arcdist import figures; warnings.resetwarnings(); "
            "warnings.simplefilter('always'); "
            "fig = figures.raw_figure(np.eye(3, 2), np.arange(3), 3.0, '数字', ['chat noir', '数字 two', '日本'], "
            "geometry={'W': np.eye(3, 2)}); fig.savefig(%r); print(figures.plt.rcParams['font.family'])"
            % str(tmp_path / "f.png"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(family), proc.stderr
    assert family[0] == "DejaVu Sans" and "missing from font" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("n", [2, 20, 1000])
def test_sphere_figures_draw_every_class(n):
    feats, labels, W = classes(n, dim=3)
    fig = sphere_figures.sphere_figure(feats, labels, W, 0.2, "t", "cap")
    for ax in fig.axes:
        assert points(ax) == 3 * n and len(point_colours(ax)) == len(set(palette.class_colours(n)))
    fig = sphere_figures.raw3d_figure(feats, labels, 3.0, "t", "", [str(i) for i in range(n)])
    assert points(fig.axes[0]) == 3 * n and legend_entries(fig.axes[0]) == (n if n <= 20 else 0)


@pytest.mark.parametrize("n,margin", [(10, 0.2), (10, 0.5), (20, 0.5), (2, 0.5)])
def test_sphere_caps_hold_only_points_that_meet_the_margin_and_reach_the_first_that_does_not(n, margin):
    """Every point inside a class's cap meets theta_y + m < theta_j for all j (float64 arccos, the condition itself),
    and the cap is the largest such: just past its edge towards the nearest direction the condition fails. The
    sphere figure draws one ring per class whose cap is not empty."""
    W = directions.spread(n, 3).double().numpy() if n > 2 else np.array([[0, 0, 1.0], [0.6, 0, 0.8]])
    radii = directions.margin_caps(W, margin)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50_000, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    theta = np.arccos(np.clip(x @ W.T, -1, 1))
    for y, r in enumerate(radii):
        inside = theta[:, y] < r
        assert np.all(np.delete(theta[inside], y, 1) > theta[inside][:, [y]] + margin)
        j = np.argmax(np.where(np.arange(n) == y, -2, W @ W[y]))  # the nearest other direction
        if r > 0:
            towards = W[j] - (W[j] @ W[y]) * W[y]
            edge = np.cos(r + 1e-6) * W[y] + np.sin(r + 1e-6) * towards / np.linalg.norm(towards)
            assert np.arccos(edge @ W[y]) + margin >= np.arccos(np.clip(edge @ W[j], -1, 1))
    assert (radii > 0).sum() == {(10, 0.2): 10, (10, 0.5): 10, (20, 0.5): 20, (2, 0.5): 2}[(n, margin)]
    fig = sphere_figures.sphere_figure(W[np.arange(n).repeat(2)], np.arange(n).repeat(2), W, margin, "t", "c")
    fig.canvas.draw()
    rings = [c for c in fig.axes[0].collections if type(c).__name__ == "Line3DCollection"][2:]  # the wireframe, W
    assert sum(len(c.get_segments()) for c in rings) == (radii > 0).sum()


@pytest.mark.parametrize("n", [5, 1000])
def test_a_run_trained_on_some_classes_draws_the_unseen_apart_with_a_direction_per_row(n):
    """W's rows stand for the seen classes (`rows`): each row's ray and cap in its class's colour, every class's
    points drawn, the unseen ones as triangles ("(unseen)" in the legend up to 20 classes)."""
    feats, labels, W = classes(n)
    rows = np.arange(1, n, 2)  # the odd classes were trained on
    colours = palette.class_colours(n)
    fig = figures.circle_figure(feats, labels, W[rows], 0.2, "t", "cap", rows=rows)
    ax = fig.axes[0]
    assert points(ax) == 3 * n
    rays = [c for c in ax.collections if hasattr(c, "get_segments") and type(c).__name__ == "LineCollection"]
    assert [to_hex(c) for c in rays[0].get_colors()] == [colours[r] for r in rows]
    triangles = [c for c in scatters(ax) if len(c.get_offsets()) and c.get_paths()[0].vertices.shape[0] == 4]
    assert sum(len(c.get_offsets()) for c in triangles) == 3 * (n - len(rows))  # the even classes
    if n <= 20:
        assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["0 (unseen)", "1"]
    figures.plt.close(fig)
    fig = figures.raw_figure(feats, labels, 3.0, "t", geometry={"W": W[rows], "rows": rows})
    assert points(fig.axes[0]) == 3 * n
    figures.plt.close(fig)
    fig = sphere_figures.sphere_figure(*classes(n, dim=3)[:2], classes(n, dim=3)[2][rows], 0.2, "t", rows=rows)
    assert all(points(ax) == 3 * n for ax in fig.axes)
    figures.plt.close(fig)
