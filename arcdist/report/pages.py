"""The report's files: a self-contained HTML page, a markdown summary, summary.json and the W&B Report spec."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from arcdist import runinfo
from arcdist.heads import head_class
from arcdist.report.plots import curves_figure, features_figure
from arcdist.report.stats import (STD_NOTE, VERDICT_RULE, ReportError, balanced_cells, display_row, load_grid, loss_row,
                                  noise_verdict, summarise, unseen_cells)
from arcdist.wandb_report import wandb_report_spec

LOSSES = ("Losses side by side: one head per row on the same backbone, recipe and seeds; accuracy by each head's "
          "prediction rule, angles of the feature directions")
IMAGES = ("test_accuracy.png", "train_loss.png", "features.png")
HEADINGS = dict(test_accuracy="Test accuracy per epoch (mean over seeds)",
                train_loss="Train loss per epoch (mean over seeds)",
                features="Final 2-D test features: lowest seed, last epoch, each panel on its own scale "
                         "(the post's figures), over each head's decision regions (softmax, center loss, with its "
                         "centers as X) or class directions (dashed)")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#eef}td.n{text-align:right;white-space:nowrap}img{max-width:100%;display:block;margin:12px 0}
.wrap{overflow-x:auto}.note{color:#555}"""


def _html_table(cells: list[dict]) -> str:
    e = html.escape
    numeric = {"params", "MFLOPs/img", "seeds", "final acc", "best acc", "intra spread (deg)",
               "min centre angle (deg)", "diverged", "epochs to acc threshold", "train time (s)", "P@1", "MAP@R"}
    head = "".join(f"<th>{e(k)}</th>" for k in cells[0])
    body = "".join("<tr>" + "".join(f"<td{' class=n' if k in numeric else ''}>{e(v)}</td>" for k, v in c.items())
                   + "</tr>\n" for c in cells)
    return f'<div class="wrap"><table><tr>{head}</tr>\n{body}</table></div>'


def _md_table(cells: list[dict]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * len(cells[0]),
            *["| " + " | ".join(esc(v) for v in c.values()) + " |" for c in cells]]


def write_html(path: Path, title: str, notes: list[str], cells: list[dict], images: list[Path],
               sections: list[tuple[str, list[dict]]] = ()) -> Path:
    """A page that needs nothing else: inline CSS, images as data URIs, no scripts or fonts; `sections` are more
    (heading, table) pairs after the main table."""
    e = html.escape
    extra = "".join(f"<h2>{e(h)}</h2>{_html_table(c)}\n" for h, c in sections)
    imgs = "".join(f'<h2>{e(HEADINGS[p.stem])}</h2><img alt="{e(p.stem)}" src="{_data_uri(p)}">\n'
                   for p in images)
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{e(title)}</h1>" + "".join(f'<p class="note">{e(n)}</p>' for n in notes)
            + EXPLORE_LINK + f'{_html_table(cells)}{extra}{imgs}</body></html>\n')
    runinfo.atomic_write(path, page)
    return path


EXPLORE_LINK = ('<p class="note">The features over the epochs, interactive (hover, slider, classes): '
                '<a href="explore.html">explore.html</a>, written beside this page by '
                '<code>python -m arcdist.explore GRID_DIR</code>.</p>')


def write_markdown(path: Path, title: str, notes: list[str], cells: list[dict], images: list[Path],
                   sections: list[tuple[str, list[dict]]] = ()) -> Path:
    """report.md: the same tables, the PNGs beside it."""
    lines = [f"# {title}", "", *[f"{n}\n" for n in notes], *_md_table(cells)]
    for heading, section in sections:
        lines += ["", f"## {heading}", "", *_md_table(section)]
    lines += ["", *[f"## {HEADINGS[p.stem]}\n\n![{p.stem}]({p.name})\n" for p in images]]
    runinfo.atomic_write(path, "\n".join(lines) + "\n")
    return path


def build_report(grid_dir: Path, out: Path | None = None, threshold_acc: float = 0.97,
                 threshold_angle: float = 20.0, threshold_gap: float = 1.0) -> dict:
    """Write report.html, report.md, summary.json, the PNGs and wandb_report.json; returns the summary."""
    grid_dir = Path(grid_dir)
    doc = load_grid(grid_dir)
    rows = summarise(doc, threshold_acc, threshold_angle, threshold_gap)
    if not any(r["seeds"] for r in rows):
        raise ReportError(f"no run in {grid_dir} has metrics.jsonl yet; run `python -m arcdist.grid` first")
    out = Path(out) if out else grid_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = [curves_figure(rows, "test_accuracy", "test accuracy", out / IMAGES[0]),
              curves_figure(rows, "train_loss", "train loss", out / IMAGES[1]),
              features_figure(rows, out / IMAGES[2])]
    cells = [display_row(r) for r in rows]
    if any(r["dataset"] == "folder" for r in rows):  # a folder's test split is as unequal as its classes
        cells = [balanced_cells(c, r) for r, c in zip(rows, cells)]
    if any(r["unseen_auroc"]["mean"] is not None for r in rows):  # some runs trained on some classes only
        for r, c in zip(rows, cells):
            c.update(unseen_cells(r))
    if any(r["sets"] for r in rows):  # a sweep: each row against the first, by the seed noise
        for r, c in zip(rows, cells):
            c[f"acc - {rows[0]['label']}"] = noise_verdict(r, rows[0])
    rule = VERDICT_RULE.format(angle=threshold_angle, acc=threshold_acc, gap=threshold_gap)
    epochs = doc.get("epochs") or "each variant's default"
    notes = [f"Grid {doc.get('grid_id', grid_dir.name)}: {len(doc['jobs'])} jobs, epochs: {epochs}, "
             f"overrides: {', '.join(doc.get('overrides') or []) or 'none'}"
             + (f"; sweeps: {', '.join(doc['sweeps'])} (a row per value; 'acc - ...': the difference to the first "
                "row and whether it exceeds twice the standard error of the difference)" if doc.get("sweeps") else "")
             + ".",
             f"Numbers: {STD_NOTE}. Accuracy and angles are those of each run's last epoch; params and FLOPs are "
             "the variant's (arcdist.variants); train time is the sum of epoch times.",
             f"Epochs to acc threshold: first epoch with test accuracy >= {threshold_acc:g}, mean over the seeds "
             "that reached it ('never' if none did).", f"Measured verdict: {rule}."]
    notes += [f"Failed job {f}" for r in rows for f in r["failed"]]
    title = f"arcdist report: {doc.get('grid_id', grid_dir.name)}"
    reference = next((r for r in rows if head_class(r["head"]).baseline), None)
    losses = [loss_row(r, reference) for r in rows] if len({r["head"] for r in rows}) > 1 else []
    sections = [(LOSSES, losses)] if losses else []
    write_html(out / "report.html", title, notes, cells, images, sections)
    write_markdown(out / "report.md", title, notes, cells, images, sections)
    summary = dict(grid_id=doc.get("grid_id"), grid_dir=str(grid_dir), std=STD_NOTE, verdict_rule=rule,
                   thresholds=dict(accuracy=threshold_acc, angle_deg=threshold_angle, mean_gap=threshold_gap),
                   images=[p.name for p in images],
                   variants=[dict({k: v for k, v in r.items() if k != "curves"}, display=c)
                             for r, c in zip(rows, cells)], losses=losses)
    runinfo.atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    spec = wandb_report_spec(doc, grid_group(doc, grid_dir))
    runinfo.atomic_write(out / "wandb_report.json", json.dumps(spec, indent=1))
    return summary


def grid_group(doc: dict, grid_dir: Path) -> str:
    """The grid's W&B group: its id (the folder's name for an old grid.json without one)."""
    return doc.get("grid_id") or Path(grid_dir).name
