"""The command line: a grid folder, a W&B group, or a saved spec to push."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arcdist import runinfo
from arcdist.cli import ArgumentParser
from arcdist.config import first_line
from arcdist.errors import Exit
from arcdist.report.pages import build_report, grid_group
from arcdist.report.stats import POST, ReportError, load_grid
from arcdist.wandb_report import WandbError, pull_group, push_spec, wandb_report_spec

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from arcdist import report

    p = ArgumentParser(prog="arcdist.report", description=report.__doc__)
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
    args = p.parse_args(argv)
    for flag, value, ok, want in (("--threshold-acc", args.threshold_acc, 0 <= args.threshold_acc <= 1,
                                   "a fraction in [0, 1], e.g. 0.97 (not a percentage)"),
                                  ("--threshold-angle", args.threshold_angle, args.threshold_angle >= 0, "0 or more"),
                                  ("--threshold-gap", args.threshold_gap, args.threshold_gap >= 0, "0 or more"),
                                  ("--timeout", args.timeout, args.timeout > 0, "more than 0 seconds")):
        if not ok:  # (NaN fails every comparison)
            p.error(f"{flag} {value:g}: expected {want}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.push_spec:
            if not Path(args.push_spec).is_file():
                raise ReportError(f"{args.push_spec} does not exist; `python -m arcdist.report GRID_DIR` "
                                  "writes it as GRID_DIR/report/wandb_report.json")
            print(f"W&B report: {push_spec(json.loads(Path(args.push_spec).read_text()), args.timeout)}")
            return Exit.OK
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
        return Exit.BAD_INPUT
    except Exception as e:  # noqa: BLE001 - W&B client errors: one line, no traceback
        if not (args.push_spec or args.wandb_group):
            raise
        print(f"arcdist.report: error: W&B: {first_line(e)}", file=sys.stderr)
        return Exit.BAD_INPUT
    for d in (row["display"] for row in summary["variants"]):
        print(f"{d['variant']:10s} final acc {d['final acc']:18s} min angle {d['min centre angle (deg)']:16s} "
              f"{d['measured verdict']:9s} (post: {d[POST]})")
    print(f"report: {out / 'report.html'}")
    return _push(args, grid_dir, out) if args.push else Exit.OK


def _push(args: argparse.Namespace, grid_dir: Path, out: Path) -> int:
    """--push: save the Report, or say where the spec waits when that cannot happen."""
    doc = load_grid(grid_dir)
    spec = wandb_report_spec(doc, grid_group(doc, grid_dir), args.entity, args.project)
    spec_path = out / "wandb_report.json"
    runinfo.atomic_write(spec_path, json.dumps(spec, indent=1))
    later = f"the spec is in {spec_path}; push it later with `python -m arcdist.report --push-spec {spec_path}`"
    try:
        print(f"W&B report: {push_spec(spec, args.timeout)}")
        return Exit.OK
    except WandbError as e:  # no credentials: expected offline, not a failure
        print(f"arcdist.report: {e}; {later}")
        return Exit.OK
    except Exception as e:  # noqa: BLE001 - network/API failure: one line
        print(f"arcdist.report: warning: W&B push failed ({first_line(e)}); {later}", file=sys.stderr)
        return Exit.FAILED

