"""One report for a grid: a self-contained HTML page, a markdown summary and a W&B Report spec.

    python -m arcdist.report runs/study                      # -> runs/study/report/{report.html,report.md,...}
    python -m arcdist.report runs/study --push               # also create the W&B Report (needs credentials)
    python -m arcdist.report --push-spec runs/study/report/wandb_report.json   # push a saved spec later
    python -m arcdist.report --wandb-group study --entity E --project P        # the same from W&B runs

Every statistic is over the seeds of a variant: the mean and the sample standard deviation (ddof=1);
with one seed the deviation is "n/a". The measured verdict follows the rule in `VERDICT_RULE`.
The W&B Report itself (spec, push, pull of a group) is arcdist.wandb_report; this module is its command line.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from arcdist import figures, runinfo
from arcdist.cli import ArgumentParser
from arcdist.config import first_line
from arcdist.figures import COLOURS, plt
from arcdist.wandb_report import WandbError, pull_group, push_spec, wandb_report_spec

STATS = ("final_accuracy", "best_accuracy", "intra_spread_deg", "min_centre_angle_deg", "min_mean_gap",
         "worst_class_accuracy", "wall_time_s")
STD_NOTE = "mean ± sample standard deviation over seeds (ddof=1); the deviation is n/a with one seed"
VERDICT_RULE = ("diverged if any seed diverged; else separated if the mean final test accuracy is at least {acc:g} "
                "and the classes are apart by the head's own geometry: for the heads that classify by direction "
                "(softmax, whose features grow along rays, and the angular heads) the mean smallest angle between "
                "class centre directions is at least {angle:g} deg; for center loss, which pulls each class to a "
                "point, the mean smallest distance between class means over the sum of their RMS radii is at least "
                "{gap:g}; else overlap")
POSITIONAL = ("center",)  # head kinds judged by position (min_mean_gap), not by angle
POST = "post's verdict"
LOSSES = ("Losses side by side: one head per row on the same backbone, recipe and seeds; accuracy by each head's "
          "prediction rule, angles of the feature directions")
IMAGES = ("test_accuracy.png", "train_loss.png", "features.png")
HEADINGS = dict(test_accuracy="Test accuracy per epoch (mean over seeds)",
                train_loss="Train loss per epoch (mean over seeds)",
                features="Final 2-D test features: lowest seed, last epoch, each panel on its own scale "
                         "(the post's figures), over each head's decision regions (softmax, center loss, with its "
                         "centers as X) or class directions (dashed)")


class ReportError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --- reading a grid ---------------------------------------------------------------------------------
def load_grid(grid_dir: Path) -> dict:
    """grid.json, with each job's run folder resolved (the grid folder may have moved since)."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise ReportError(f"{grid_dir} does not exist; pass the folder made by "
                          "`python -m arcdist.grid --grid-id ID` (OUT/ID, runs/ID by default)")
    path = grid_dir / "grid.json"
    if not path.is_file():
        raise ReportError(f"{grid_dir} has no grid.json; pass a grid folder (OUT/ID of `python -m arcdist.grid`), "
                          "or use --wandb-group GROUP for runs on W&B")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}); rerun `python -m arcdist.grid` to rewrite it") from None
    if not isinstance(doc, dict) or not doc.get("jobs"):
        raise ReportError(f"{path} lists no jobs; rerun `python -m arcdist.grid` with the same --grid-id")
    for job in doc["jobs"]:
        moved = grid_dir / Path(job["run_dir"]).name
        job["run_dir"] = str(moved if moved.is_dir() else Path(job["run_dir"]))
    return doc


def run_stats(run_dir: Path, threshold_acc: float) -> dict | None:
    """One run's numbers from metrics.jsonl (None when it has none yet)."""
    rows = runinfo.read_metrics(run_dir)
    if not rows:
        return None
    evals = [r for r in rows if "test_accuracy" in r]
    last = evals[-1] if evals else {}
    return dict(
        final_accuracy=last.get("test_accuracy"),
        best_accuracy=max((r["test_accuracy"] for r in evals), default=None),
        intra_spread_deg=last.get("intra_spread_deg"), min_centre_angle_deg=last.get("min_centre_angle_deg"),
        min_mean_gap=last.get("min_mean_gap"),
        worst_class=last.get("worst_class"), worst_class_accuracy=last.get("worst_class_accuracy"),
        wall_time_s=sum(r.get("epoch_time_s", 0.0) for r in rows),
        diverged=any(r.get("status") == "diverged" for r in rows)
        or bool(runinfo.read_summary(run_dir).get("diverged")),
        epochs_to=next((r["epoch"] for r in evals if r["test_accuracy"] >= threshold_acc), None),
        curves={k: {r["epoch"]: r[k] for r in evals if _finite(r.get(k))} for k in ("test_accuracy", "train_loss")})


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def mean_std(values: list) -> dict:
    """Mean and sample std (ddof=1) of the finite values; std None with fewer than two."""
    v = [float(x) for x in values if _finite(x)]
    return dict(mean=float(np.mean(v)) if v else None, std=float(np.std(v, ddof=1)) if len(v) > 1 else None,
                n=len(v), values=v)


def fmt(stat: dict, digits: int) -> str:
    """'m ± s' with `digits` decimals; 'm ± n/a' with one value; 'n/a' with none."""
    if stat["mean"] is None:
        return "n/a"
    std = "n/a" if stat["std"] is None else f"{stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {std}"


def summarise(doc: dict, threshold_acc: float, threshold_angle: float, threshold_gap: float = 1.0) -> list[dict]:
    """One dict per (dataset, variant) of the grid, in the grid's order."""
    from arcdist.variants import table_rows

    info = {r["name"]: r for r in table_rows()}
    several = len({j["dataset"] for j in doc["jobs"]}) > 1
    groups: dict[tuple, list] = {}
    for job in doc["jobs"]:
        groups.setdefault((job["dataset"], job["variant"]), []).append(job)
    out = []
    for (dataset, variant), jobs in groups.items():
        if variant not in info:
            raise ReportError(f"grid.json names variant {variant!r}, which arcdist.variants no longer defines")
        runs = [(j, s) for j in jobs if (s := run_stats(Path(j["run_dir"]), threshold_acc)) is not None]
        row = dict(variant=variant, dataset=dataset, label=f"{dataset}/{variant}" if several else variant,
                   parent=info[variant]["parent"], changed=info[variant]["changed"], params=info[variant]["params"],
                   flops=info[variant]["flops"], post_verdict=info[variant]["verdict"], n_jobs=len(jobs),
                   head=info[variant]["head"], head_settings=info[variant]["head_settings"],
                   seeds=[j["seed"] for j, _ in runs], run_dirs=[j["run_dir"] for j, _ in runs],
                   failed=[f"{Path(j['run_dir']).name}: {j.get('error') or j['status']}" for j in jobs
                           if j["status"] == "failed"],
                   diverged_seeds=sum(s["diverged"] for _, s in runs))
        row.update({k: mean_std([s[k] for _, s in runs]) for k in STATS})
        worst = [s["worst_class"] for _, s in runs if s["worst_class"] is not None]
        row["worst_class"] = max(set(worst), key=worst.count) if worst else None  # the seeds' most frequent
        reached = [s["epochs_to"] for _, s in runs if s["epochs_to"] is not None]
        row["epochs_to"] = dict(mean=float(np.mean(reached)) if reached else None, reached=len(reached), n=len(runs))
        row["curves"] = {k: _mean_curve([s["curves"][k] for _, s in runs]) for k in ("test_accuracy", "train_loss")}
        row["measured_verdict"] = measured_verdict(row, threshold_acc, threshold_angle, threshold_gap)
        out.append(row)
    return out


def _mean_curve(curves: list[dict]) -> dict:
    """Epoch -> mean over the seeds that have that epoch."""
    epochs = sorted({e for c in curves for e in c})
    return {e: float(np.mean([c[e] for c in curves if e in c])) for e in epochs}


def measured_verdict(row: dict, threshold_acc: float, threshold_angle: float, threshold_gap: float = 1.0) -> str:
    """The rule of VERDICT_RULE: angle for the heads that classify by direction, position for center loss."""
    if row["diverged_seeds"]:
        return "diverged"
    acc = row["final_accuracy"]["mean"]
    positional = row["head"] in POSITIONAL
    apart = row["min_mean_gap" if positional else "min_centre_angle_deg"]["mean"]
    if acc is None or apart is None:
        return "no data"
    return "separated" if apart >= (threshold_gap if positional else threshold_angle) and acc >= threshold_acc \
        else "overlap"


def display_row(row: dict) -> dict:
    """The table's cells as text."""
    e = row["epochs_to"]
    if e["mean"] is None:
        epochs = "never"
    else:
        epochs = f"{e['mean']:.1f}" + (f" ({e['reached']}/{e['n']} seeds)" if e["reached"] < e["n"] else "")
    return {"variant": row["label"], "parent": row["parent"], "what changed": row["changed"],
            "params": f"{row['params']:,}", "MFLOPs/img": f"{row['flops'] / 1e6:,.1f}",
            "seeds": f"{len(row['seeds'])}/{row['n_jobs']}", "final acc": fmt(row["final_accuracy"], 4),
            "best acc": fmt(row["best_accuracy"], 4), "intra spread (deg)": fmt(row["intra_spread_deg"], 2),
            "min centre angle (deg)": fmt(row["min_centre_angle_deg"], 2),
            "min mean gap": fmt(row["min_mean_gap"], 2),
            "worst class: acc": "n/a" if row["worst_class"] is None else
            f"{row['worst_class']}: {fmt(row['worst_class_accuracy'], 4)}",
            "diverged": f"{row['diverged_seeds']}/{len(row['seeds'])}", "epochs to acc threshold": epochs,
            "train time (s)": fmt(row["wall_time_s"], 1), POST: row["post_verdict"],
            "measured verdict": row["measured_verdict"]}


def loss_row(row: dict, reference: dict | None = None) -> dict:
    """The losses side-by-side table's cells; with a `reference` row (softmax), the accuracy difference to it and
    whether it exceeds the seed noise: |difference| > 2 sqrt(s1^2/n1 + s2^2/n2), the sample stds over seeds."""
    cells = {"head": row["head"], "variant": row["label"], "settings": row["head_settings"],
             "seeds": f"{len(row['seeds'])}/{row['n_jobs']}", "final acc": fmt(row["final_accuracy"], 4),
             "intra spread (deg)": fmt(row["intra_spread_deg"], 2),
             "min centre angle (deg)": fmt(row["min_centre_angle_deg"], 2),
             "diverged": f"{row['diverged_seeds']}/{len(row['seeds'])}"}
    if reference is not None:
        cells[f"acc - {reference['head']}"] = noise_verdict(row, reference)
    return cells


def noise_verdict(row: dict, reference: dict) -> str:
    """'+0.0012 (noise 0.0008: beyond)' or '... within'; 'n/a' without two seeds on both sides."""
    a, b = row["final_accuracy"], reference["final_accuracy"]
    if row is reference:
        return "-"
    if a["std"] is None or b["std"] is None:
        return "n/a"
    diff = a["mean"] - b["mean"]
    noise = 2 * math.sqrt(a["std"] ** 2 / len(row["seeds"]) + b["std"] ** 2 / len(reference["seeds"]))
    return f"{diff:+.4f} (noise {noise:.4f}: {'beyond' if abs(diff) > noise else 'within'})"


# --- figures ----------------------------------------------------------------------------------------
def curves_figure(rows: list[dict], key: str, ylabel: str, path: Path) -> Path:
    """One line per variant: `key` per epoch, mean over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, row in enumerate(rows):
        curve = row["curves"][key]
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, label=row["label"],
                color=plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")(i % 20))
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
        figures.draw_head(ax, figures.head_geometry(f), limit)
        for c in range(10):
            pts = f["features"][f["labels"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=2, c=COLOURS[c], label=str(c), linewidths=0, rasterized=True)
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
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=10, markerscale=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))
    return fig


# --- writing ----------------------------------------------------------------------------------------
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#eef}td.n{text-align:right;white-space:nowrap}img{max-width:100%;display:block;margin:12px 0}
.wrap{overflow-x:auto}.note{color:#555}"""


def _html_table(cells: list[dict]) -> str:
    e = html.escape
    numeric = {"params", "MFLOPs/img", "seeds", "final acc", "best acc", "intra spread (deg)",
               "min centre angle (deg)", "diverged", "epochs to acc threshold", "train time (s)"}
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
    rule = VERDICT_RULE.format(angle=threshold_angle, acc=threshold_acc, gap=threshold_gap)
    epochs = doc.get("epochs") or "each variant's default"
    notes = [f"Grid {doc.get('grid_id', grid_dir.name)}: {len(doc['jobs'])} jobs, epochs: {epochs}, "
             f"overrides: {', '.join(doc.get('overrides') or []) or 'none'}.",
             f"Numbers: {STD_NOTE}. Accuracy and angles are those of each run's last epoch; params and FLOPs are "
             "the variant's (arcdist.variants); train time is the sum of epoch times.",
             f"Epochs to acc threshold: first epoch with test accuracy >= {threshold_acc:g}, mean over the seeds "
             "that reached it ('never' if none did).", f"Measured verdict: {rule}."]
    notes += [f"Failed job {f}" for r in rows for f in r["failed"]]
    title = f"arcdist report: {doc.get('grid_id', grid_dir.name)}"
    reference = next((r for r in rows if r["head"] == "softmax"), None)
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


# --- command line -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist.report", description=__doc__)
    p.add_argument("grid_dir", nargs="?", help="the grid folder (OUT/GRID_ID of arcdist.grid)")
    p.add_argument("--out", default=None, help="where to write (default GRID_DIR/report)")
    p.add_argument("--threshold-acc", type=float, default=0.97, help="accuracy for 'separated' and epochs-to")
    p.add_argument("--threshold-angle", type=float, default=20.0, help="smallest centre angle (deg) for 'separated'")
    p.add_argument("--threshold-gap", type=float, default=1.0,
                   help="center loss: smallest distance between class means over their RMS radii for 'separated'")
    p.add_argument("--push", action="store_true", help="also create the W&B Report (needs credentials)")
    p.add_argument("--push-spec", metavar="FILE", help="push a saved wandb_report.json and exit")
    p.add_argument("--wandb-group", metavar="GROUP", help="report on a W&B group instead of a grid folder")
    p.add_argument("--entity", default=None)
    p.add_argument("--project", default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for W&B calls (default 60)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.push_spec:
            if not Path(args.push_spec).is_file():
                raise ReportError(f"{args.push_spec} does not exist; `python -m arcdist.report GRID_DIR` "
                                  "writes it as GRID_DIR/report/wandb_report.json")
            print(f"W&B report: {push_spec(json.loads(Path(args.push_spec).read_text()), args.timeout)}")
            return 0
        if args.wandb_group:
            dest = Path(args.out or f"wandb-{args.wandb_group}")
            grid_dir = pull_group(args.wandb_group, args.entity, args.project or "arcdist", dest, args.timeout)
            out = dest / "report"
        elif args.grid_dir:
            grid_dir, out = Path(args.grid_dir), Path(args.out or Path(args.grid_dir) / "report")
        else:
            raise ReportError("give GRID_DIR (a folder made by `python -m arcdist.grid`), --wandb-group or --push-spec")
        summary = build_report(grid_dir, out, args.threshold_acc, args.threshold_angle, args.threshold_gap)
    except (ReportError, WandbError, TimeoutError, OSError) as e:
        print(f"arcdist.report: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - W&B client errors: one line, no traceback
        if not (args.push_spec or args.wandb_group):
            raise
        print(f"arcdist.report: error: W&B: {first_line(e)}", file=sys.stderr)
        return 2
    for d in (row["display"] for row in summary["variants"]):
        print(f"{d['variant']:10s} final acc {d['final acc']:18s} min angle {d['min centre angle (deg)']:16s} "
              f"{d['measured verdict']:9s} (post: {d[POST]})")
    print(f"report: {out / 'report.html'}")
    return _push(args, grid_dir, out) if args.push else 0


def _push(args: argparse.Namespace, grid_dir: Path, out: Path) -> int:
    """--push: save the Report, or say where the spec waits when that cannot happen."""
    doc = load_grid(grid_dir)
    spec = wandb_report_spec(doc, grid_group(doc, grid_dir), args.entity, args.project)
    spec_path = out / "wandb_report.json"
    runinfo.atomic_write(spec_path, json.dumps(spec, indent=1))
    later = f"the spec is in {spec_path}; push it later with `python -m arcdist.report --push-spec {spec_path}`"
    try:
        print(f"W&B report: {push_spec(spec, args.timeout)}")
        return 0
    except WandbError as e:  # no credentials: expected offline, not a failure
        print(f"arcdist.report: {e}; {later}")
        return 0
    except Exception as e:  # noqa: BLE001 - network/API failure: one line
        print(f"arcdist.report: warning: W&B push failed ({first_line(e)}); {later}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
