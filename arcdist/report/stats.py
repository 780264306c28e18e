"""A grid's numbers: each run's metrics, the statistics over seeds, the measured verdict and the noise rule."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from arcdist import fingerprint, runinfo
from arcdist.figures import class_names
from arcdist.heads import head_class
from arcdist.status import RunStatus

STATS = ("final_accuracy", "best_accuracy", "balanced_accuracy", "intra_spread_deg", "min_centre_angle_deg",
         "min_mean_gap", "worst_class_accuracy", "wall_time_s", "precision_at_1", "mean_average_precision_at_r",
         *runinfo.UNSEEN)  # (runs with data.train_classes)
STD_NOTE = "mean ± sample standard deviation over seeds (ddof=1); the deviation is n/a with one seed"
VERDICT_RULE = ("diverged if any seed diverged; else separated if the mean final test accuracy is at least {acc:g} "
                "and the classes are apart by the head's own geometry: for the heads that classify by direction "
                "(softmax, whose features grow along rays, and the angular heads) the mean smallest angle between "
                "class centre directions is at least {angle:g} deg; for center loss, which pulls each class to a "
                "point, the mean smallest distance between class means over the sum of their RMS radii is at least "
                "{gap:g}; else overlap")
POST = "post's verdict"
NONE = dict(mean=None, std=None, n=0, values=[])  # a figure no run of the row has (runs before it existed)


class ReportError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --- reading a grid ---------------------------------------------------------------------------------
def load_grid(grid_dir: Path) -> dict:
    """grid.json, with each job's run folder resolved (the grid folder may have moved since)."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        what = "is a file, not a grid folder" if grid_dir.exists() else "does not exist"
        raise ReportError(f"{grid_dir} {what}; pass the folder made by "
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
    check_same_data(doc)
    return doc


def check_same_data(doc: dict) -> None:
    """ReportError when two runs of one dataset (and the same --limit-train/--limit-test) recorded different data
    fingerprints (arcdist.fingerprint): their seeds would be averaged over different images."""
    seen: dict[tuple, tuple[str, str]] = {}
    for job in doc["jobs"]:
        run = Path(job["run_dir"])
        try:
            saved = json.loads((run / runinfo.CONFIG).read_text())
        except (OSError, ValueError):
            continue
        data, fp = saved.get("config", {}).get("data", {}), saved.get(fingerprint.KEY)
        if fp is None:
            continue
        key = (data.get("dataset"), data.get("limit_train"), data.get("limit_test"))
        first = seen.setdefault(key, (str(run), fp))
        if first[1] != fp:
            raise ReportError(f"{first[0]} and {run} are both {key[0]} runs but were trained on different data "
                              f"(fingerprints {first[1][:32]}... and {fp[:32]}...); report them separately or "
                              "retrain one on the other's data")


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
        balanced_accuracy=last.get("balanced_accuracy"),
        intra_spread_deg=last.get("intra_spread_deg"), min_centre_angle_deg=last.get("min_centre_angle_deg"),
        min_mean_gap=last.get("min_mean_gap"), precision_at_1=last.get("precision_at_1"),
        mean_average_precision_at_r=last.get("mean_average_precision_at_r"),
        **{k: last.get(k) for k in runinfo.UNSEEN},
        worst_class=last.get("worst_class"), worst_class_accuracy=last.get("worst_class_accuracy"),
        wall_time_s=sum(r.get("epoch_time_s", 0.0) for r in rows),
        diverged=any(r.get("status") == RunStatus.DIVERGED for r in rows)
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
    """One dict per (dataset, variant, sweep settings) of the grid, in the grid's order."""
    from arcdist.variants import table_rows

    info = {r["name"]: r for r in table_rows()}
    several = len({j["dataset"] for j in doc["jobs"]}) > 1
    groups: dict[tuple, list] = {}
    for job in doc["jobs"]:
        groups.setdefault((job["dataset"], job["variant"], tuple(job.get("sets") or ())), []).append(job)
    out = []
    for (dataset, variant, sets), jobs in groups.items():
        if variant not in info:
            raise ReportError(f"grid.json names variant {variant!r}, which arcdist.variants no longer defines")
        runs = [(j, s) for j in jobs if (s := run_stats(Path(j["run_dir"]), threshold_acc)) is not None]
        name = " ".join([variant, *sets])
        row = dict(variant=variant, dataset=dataset, label=f"{dataset}/{name}" if several else name, sets=list(sets),
                   parent=info[variant]["parent"], params=info[variant]["params"],
                   changed="; ".join([info[variant]["changed"], *sets]),
                   flops=info[variant]["flops"], post_verdict=info[variant]["verdict"], n_jobs=len(jobs),
                   head=info[variant]["head"], head_settings=info[variant]["head_settings"],
                   seeds=[j["seed"] for j, _ in runs], run_dirs=[j["run_dir"] for j, _ in runs],
                   failed=[f"{Path(j['run_dir']).name}: {j.get('error') or j['status']}" for j in jobs
                           if j["status"] == RunStatus.FAILED],
                   diverged_seeds=sum(s["diverged"] for _, s in runs))
        row.update({k: mean_std([s[k] for _, s in runs]) for k in STATS})
        worst = [s["worst_class"] for _, s in runs if s["worst_class"] is not None]
        names = class_names(Path(runs[0][0]["run_dir"])) if runs else None  # a folder dataset's own names
        name = lambda w: names[w] if names and w < len(names) else str(w)  # noqa: E731
        # each seed's worst class, most frequent first: the accuracy beside it is the mean over the seeds of their
        # own worst class's (naming one class for it mixed classes when the seeds disagree)
        row["worst_class"] = ", ".join(name(w) for w in sorted(set(worst), key=lambda w: (-worst.count(w), w))) \
            if worst else None
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
        return str(RunStatus.DIVERGED)
    acc = row["final_accuracy"]["mean"]
    positional = head_class(row["head"]).judged_by == "position"
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
            "P@1": fmt(row.get("precision_at_1", NONE), 4),
             "MAP@R": fmt(row.get("mean_average_precision_at_r", NONE), 4),
            "worst class: acc": "n/a" if row["worst_class"] is None else
            f"{row['worst_class']}: {fmt(row['worst_class_accuracy'], 4)}",
            "diverged": f"{row['diverged_seeds']}/{len(row['seeds'])}", "epochs to acc threshold": epochs,
            "train time (s)": fmt(row["wall_time_s"], 1), POST: row["post_verdict"],
            "measured verdict": row["measured_verdict"]}


def balanced_cells(cells: dict, row: dict) -> dict:
    """`cells` with a balanced accuracy column after the final accuracy (a grid on folders, whose classes may be
    unequal)."""
    out = {}
    for name, cell in cells.items():
        out[name] = cell
        if name == "final acc":
            out["balanced acc"] = fmt(row["balanced_accuracy"], 4)
    return out


def unseen_cells(row: dict) -> dict:
    """The open-set columns (runs trained on some classes only, arcdist.evaluation.openset)."""
    return {"unseen P@1": fmt(row["unseen_precision_at_1"], 4),
            "unseen MAP@R": fmt(row["unseen_mean_average_precision_at_r"], 4),
            "unseen AUROC": fmt(row["unseen_auroc"], 4)}


def loss_row(row: dict, reference: dict | None = None) -> dict:
    """The losses side-by-side table's cells; with a `reference` row (softmax), the accuracy difference to it and
    whether it exceeds the seed noise: |difference| > 2 sqrt(s1^2/n1 + s2^2/n2), the sample stds over seeds."""
    cells = {"head": row["head"], "variant": row["label"], "settings": row["head_settings"],
             "seeds": f"{len(row['seeds'])}/{row['n_jobs']}", "final acc": fmt(row["final_accuracy"], 4),
             "intra spread (deg)": fmt(row["intra_spread_deg"], 2),
             "min centre angle (deg)": fmt(row["min_centre_angle_deg"], 2),
             "P@1": fmt(row.get("precision_at_1", NONE), 4),
             "MAP@R": fmt(row.get("mean_average_precision_at_r", NONE), 4),
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
