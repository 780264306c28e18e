"""The explorer page: plotly panels (plotly.js embedded), the epoch slider and hover script (explorer.js), the
stored epochs as JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from arcdist import runinfo

from arcdist.explore.features import (DEFAULT_POINTS, DEFAULT_MAX_MB, SPRITE_COLS, sample_points, pick_epochs, _b64, _finite_limit, sprite, load_images, find_panels, epoch_payload, _extent, estimate_bytes)

SCRIPT = (Path(__file__).with_name("explorer.js")).read_text()


def build_page(folder: Path, out: Path | None = None, every: int | None = None, points: int = DEFAULT_POINTS,
               max_mb: float = DEFAULT_MAX_MB, data_dir: str | None = None) -> dict:
    """Write the page; returns what it holds (path, panels, epochs, points, bytes, warnings)."""
    import plotly
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from arcdist.data import DATASETS
    from arcdist.palette import class_colours, dense, legend_rule

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
    dims = max(np.shape(next(iter(s.epochs.values()))["features"])[1] for s in series)
    sprites = {k: (sprite(src["images"]) if src["images"] is not None else None) for k, src in sources.items()}
    fixed = js_plotly + sum(len(v or "") for v in sprites.values()) + 60_000
    if every is None:  # the smallest step that fits the budget (the first and last epoch are always kept)
        every = 1
        while (every < max(all_epochs) and fixed + estimate_bytes(len(series), len(pick_epochs(all_epochs, every)),
                                                                  n_points, dims) > max_mb * 1e6):
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
    classes = list(series[0].classes or (spec.classes if spec else ())) or [str(c) for c in range(10)]
    n_classes = max(len(s.epochs[max(s.epochs)]["W"]) for s in series)
    classes += [str(c) for c in range(len(classes), n_classes)]
    colours = class_colours(n_classes)
    legend = legend_rule(n_classes)  # above 20 classes no per-class legend (the figures' rule): a note instead
    data = dict(
        title=title, epochs=chosen, all_epochs=len(all_epochs), every=every, classes=classes, colours=colours,
        dense=dense(n_classes),  # W as ticks outside the circle, no caps, none behind raw points (arcdist.figures)
        sources=[dict(index=_b64(src["index"].astype(np.uint32)), labels=_b64(src["labels"].astype(np.uint16)),
                      n=src["n"], sprite=sprites[k], cols=SPRITE_COLS,
                      size=(list(src["images"].shape[2:]) if src["images"] is not None else [28, 28]))
                 for k, src in sources.items()],
        series=payload_series, panels=[dict(title=p.title, series=p.series, view=p.view) for p in panels],
        warnings=warnings + [s.projection for s in series if s.projection][:1])

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    solid = [p.view in ("raw3d", "sphere") for p in panels]
    specs = [[{"type": "scene" if solid[r * cols + c] else "xy"} if r * cols + c < len(panels) else None
              for c in range(cols)] for r in range(rows)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels], specs=specs,
                        horizontal_spacing=0.05, vertical_spacing=0.12 / rows)
    n_xy = n_scene = 0
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        if solid[i]:  # a 3-D panel: one trace per class, W (and the margin caps) as one line trace, the centers
            n_scene += 1
            data["panels"][i].update(kind="scene", ax="" if n_scene == 1 else str(n_scene))
            for k in range(n_classes):
                fig.add_trace(go.Scatter3d(x=[], y=[], z=[], mode="markers", name=classes[k], legendgroup=str(k),
                                           showlegend=i == 0 and legend.show, hoverinfo="none", marker=dict(color=colours[k], size=3, line=dict(width=0)),
                                           meta=dict(panel=i, role="class", cls=k)), row=r + 1, col=c + 1)
            fig.add_trace(go.Scatter3d(x=[], y=[], z=[], mode="lines", showlegend=False, hoverinfo="skip",
                                       line=dict(width=4), meta=dict(panel=i, role="directions")),
                          row=r + 1, col=c + 1)
            fig.add_trace(go.Scatter3d(x=[], y=[], z=[], mode="markers", name="centers", showlegend=False,
                                       hoverinfo="skip", marker=dict(symbol="x", size=5, color=colours),
                                       meta=dict(panel=i, role="centers")), row=r + 1, col=c + 1)
            scene = "scene" if n_scene == 1 else f"scene{n_scene}"
            fig.layout[scene].update(aspectmode="cube", uirevision="keep")
            continue
        n_xy += 1
        data["panels"][i].update(kind="xy", ax="" if n_xy == 1 else str(n_xy))
        # decision regions (filled in for heads with b), one trace per class, the centers
        fig.add_trace(go.Heatmap(z=[[None]], showscale=False, hoverinfo="skip", opacity=0.13, zmin=-0.5,
                                 zmax=n_classes - 0.5, colorscale=_discrete(colours), meta=dict(panel=i, role="regions")),
                      row=r + 1, col=c + 1)
        for k in range(n_classes):
            fig.add_trace(go.Scattergl(x=[], y=[], mode="markers", name=classes[k], legendgroup=str(k),
                                       showlegend=i == 0 and legend.show, hoverinfo="none", marker=dict(color=colours[k], size=4),
                                       meta=dict(panel=i, role="class", cls=k)), row=r + 1, col=c + 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="centers", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="x", size=11, color=colours, line=dict(color="black", width=1)),
                                 meta=dict(panel=i, role="centers")), row=r + 1, col=c + 1)
        axis = data["panels"][i]["ax"]
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
    hide = ("click a class in the legend to hide it in every panel" if legend.show else
            f"{legend.note}: hover a point for its class")
    controls = CONTROLS.format(title=_esc(title), n=len(chosen), every=every, total=len(all_epochs), hide=_esc(hide),
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
Hover a point for its image; crosses are misclassified; {hide};
each panel has its own axes.</p>{warnings}
<div id="bar"><button id="play" type="button">&#9654; play</button>
<input id="epoch" type="range" min="0" max="0" step="1" value="0" aria-label="epoch">
<span id="epoch-label"></span>
<label><input id="fit" type="checkbox"> fit the axes to each epoch</label></div>
<div id="tip"><div id="tip-img"></div><div id="tip-text"></div></div>"""
