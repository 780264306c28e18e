"""The W&B Report of a grid: its spec as plain data, the push that saves it, and the pull of a W&B group.

`python -m arcdist.report` writes the spec beside the HTML report (`wandb_report.json`) and pushes it with
`--push` / `--push-spec`; `--wandb-group` pulls a group's runs into a grid folder first. Every W&B call runs
in a thread bounded by a timeout, so a dead network costs seconds, not a hang.
"""
from __future__ import annotations

import json
import math
import operator
import os
import threading
from pathlib import Path

from arcdist import runinfo
from arcdist.status import RunStatus
from arcdist.variants import VARIANTS


class WandbError(Exception):
    """No credentials, or nothing in the group: one line (the report's CLI exits 2, or waits with the spec)."""


def row_name(variant: str, dataset: str, sets) -> str:
    """A run's grid row as W&B's config records it (`row`): the variant, its dataset where that is not the variant's
    own, and a sweep's settings, e.g. "A8 head.margin=0.5" or "fashion-mnist A8"."""
    own = VARIANTS[variant].config.data.dataset if variant in VARIANTS else dataset
    return " ".join([*([dataset] if dataset != own else []), variant, *sets])


def wandb_report_spec(doc: dict, group: str, entity: str | None = None, project: str | None = None) -> dict:
    """The W&B Report as plain data for the grid `doc` (grid.json): the group's runs, panels, and per-variant
    params/FLOPs to backfill into run summaries."""
    from arcdist.variants import table_rows

    variants = list(dict.fromkeys(j["variant"] for j in doc["jobs"]))
    info = {r["name"]: r for r in table_rows()}
    # a sweep's rows, or one variant's datasets, share a variant: they are told apart by the `row` train.py records
    # ("A8 head.margin=0.5", "fashion-mnist A8")
    several = len({j["dataset"] for j in doc["jobs"]}) > 1
    key = "config:row" if several or any(j.get("sets") for j in doc["jobs"]) else "config:variant"
    rows = list(dict.fromkeys(row_name(j["variant"], j["dataset"], j.get("sets") or ()) for j in doc["jobs"]))
    by_row = dict(groupby=key, agg="mean", range="stddev")
    return dict(
        title=f"arcdist grid {group}", group=group,
        entity=entity or os.environ.get("WANDB_ENTITY"), project=project or os.environ.get("WANDB_PROJECT", "arcdist"),
        description=f"{'Rows' if key == 'config:row' else 'Variants'} {', '.join(rows)}; lines and bars are means "
                    "over seeds, bands one std.",
        runset=dict(name=group, filters=[dict(section="run", key="Group", op="==", value=group)],
                    groupby=[key]),
        panels=[dict(type="line", title="test accuracy per epoch", x="Step", y=["test_accuracy"], **by_row),
                dict(type="line", title="train loss per epoch", x="Step", y=["train_loss"], **by_row),
                dict(type="bar", title="final test accuracy", metrics=["summary:final_accuracy"], **by_row),
                dict(type="scatter", title="parameters vs final test accuracy", x="summary:params",
                     y="summary:final_accuracy", log_x=True),
                dict(type="media", title="2-D test features (raw)", media_keys=["plots/test_raw"])],
        summary_backfill={v: dict(params=info[v]["params"], flops=info[v]["flops"]) for v in variants})


def _metric(key: str):
    import wandb_workspaces.reports.v2 as wr

    section, _, name = key.rpartition(":")
    return {"summary": wr.SummaryMetric, "config": wr.Config}.get(section, str)(name) if section else key


def to_wandb_report(spec: dict, entity: str, project: str):
    """wandb_workspaces objects for `spec`; building them needs no network, only `.save()` does."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    section = {"run": expr.Metric, "config": expr.Config, "summary": expr.Summary}
    ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge}
    filters = [ops[f["op"]](section[f["section"]](f["key"]), f["value"]) for f in spec["runset"]["filters"]]
    runset = wr.Runset(entity=entity, project=project, name=spec["runset"]["name"], filters=expr.And(*filters),
                       groupby=[g.replace(":", ".", 1) for g in spec["runset"]["groupby"]])
    make = {
        "line": lambda p: wr.LinePlot(title=p["title"], x=p["x"], y=[_metric(k) for k in p["y"]],
                                      groupby=_metric(p["groupby"]), groupby_aggfunc=p["agg"],
                                      groupby_rangefunc=p["range"]),
        "bar": lambda p: wr.BarPlot(title=p["title"], metrics=[_metric(k) for k in p["metrics"]],
                                    groupby=_metric(p["groupby"]), groupby_aggfunc=p["agg"],
                                    groupby_rangefunc=p["range"]),
        "scatter": lambda p: wr.ScatterPlot(title=p["title"], x=_metric(p["x"]), y=_metric(p["y"]),
                                            log_x=p.get("log_x")),
        "media": lambda p: wr.MediaBrowser(title=p["title"], media_keys=p["media_keys"], num_columns=4),
    }
    grid = wr.PanelGrid(runsets=[runset], panels=[make[p["type"]](p) for p in spec["panels"]])
    return wr.Report(entity=entity, project=project, title=spec["title"], description=spec["description"],
                     blocks=[wr.P(spec["description"]), grid])


def _bounded(fn, timeout: float, what: str):
    """fn() in a daemon thread; TimeoutError after `timeout` seconds (the thread is abandoned)."""
    box: dict = {}
    thread = threading.Thread(target=_capture, args=(fn, box), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} took longer than {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _capture(fn, box: dict) -> None:
    try:
        box["value"] = fn()
    except BaseException as e:  # noqa: BLE001 - handed to the caller
        box["error"] = e


def _wandb_api(timeout: float):
    from arcdist.tracking import has_credentials

    if not has_credentials():
        raise WandbError("no W&B credentials (set WANDB_API_KEY or run `wandb login`)")
    import wandb

    return wandb.Api(timeout=int(timeout))


def push_spec(spec: dict, timeout: float = 60.0) -> str:
    """Backfill params/flops into the group's run summaries, save the Report; returns its URL."""
    def push() -> str:
        api = _wandb_api(timeout)
        entity, project = spec.get("entity") or api.default_entity, spec["project"]
        for run in api.runs(f"{entity}/{project}", filters={"group": spec["group"]}):
            extra = spec["summary_backfill"].get(run.config.get("variant"), {})
            if extra and any(k not in run.summary for k in extra):
                run.summary.update(extra)
        report = to_wandb_report(spec, entity, project)
        report.save()
        return report.url

    return _bounded(push, timeout, "the W&B push")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pull_group(group: str, entity: str | None, project: str, dest: Path, timeout: float = 60.0) -> Path:
    """W&B runs of `group` written as a grid folder (no features: the report's 2-D panel says so)."""
    from arcdist.grid import run_name

    def pull() -> list[dict]:
        api = _wandb_api(timeout)
        jobs, runs = [], list(api.runs(f"{entity or api.default_entity}/{project}", filters={"group": group}))
        several = len({r.config.get("data", {}).get("dataset", "mnist") for r in runs}) > 1
        for run in runs:  # each run in the folder `arcdist grid` gave it
            variant, seed = run.config.get("variant"), run.config.get("train", {}).get("seed", 0)
            dataset = run.config.get("data", {}).get("dataset", "mnist")
            sets = list(run.config.get("sweep") or [])  # a sweep's row (`arcdist grid --sweep`)
            run_dir = dest / run_name(variant, seed, sets, dataset if several else None)
            run_dir.mkdir(parents=True, exist_ok=True)
            rows = [dict({k: v for k, v in r.items() if not k.startswith("_") and _finite(v)}, epoch=r["_step"])
                    for r in run.scan_history() if "test_accuracy" in r or "diverged" in r]
            rows = [dict(r, status=RunStatus.DIVERGED) if "diverged" in r else r for r in rows]
            runinfo.atomic_write(run_dir / runinfo.METRICS, "".join(json.dumps(r) + "\n" for r in rows))
            summary = {k: v for k, v in run.summary.items() if isinstance(v, (int, float, str, bool))}
            runinfo.atomic_write(run_dir / runinfo.SUMMARY, json.dumps(summary))
            jobs.append(dict(variant=variant, seed=seed, dataset=dataset, run_dir=str(run_dir), status=run.state,
                             error=None, sets=sets))
        return jobs

    jobs = _bounded(pull, timeout, "reading the W&B group")
    if not jobs:
        raise WandbError(f"W&B group {group!r} in {entity or '(default entity)'}/{project} has no runs")
    runinfo.atomic_write(dest / "grid.json", json.dumps(dict(grid_id=group, jobs=jobs), indent=1))
    return dest
