"""The command line: `python -m arcdist.explore RUN_OR_GRID_DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from arcdist.cli import ArgumentParser

from arcdist.errors import Exit
from arcdist.explore.features import DEFAULT_MAX_MB, DEFAULT_POINTS, ExploreError
from arcdist.explore.page import build_page


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from arcdist import explore

    p = ArgumentParser(prog="arcdist.explore", description=explore.__doc__)
    p.add_argument("folder", help="a run folder (with features/) or a grid folder (with grid.json)")
    p.add_argument("--out", default=None, help="the page (default RUN_DIR/explore.html, GRID_DIR/report/explore.html)")
    p.add_argument("--every", type=int, default=None,
                   help="keep every Nth epoch (and the first and last); default: the smallest N within --max-mb")
    p.add_argument("--points", type=int, default=DEFAULT_POINTS,
                   help=f"test points per panel, a seeded sample (default {DEFAULT_POINTS}; 0: all)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                   help=f"page size the default --every aims for (default {DEFAULT_MAX_MB:g} MB)")
    p.add_argument("--data-dir", default=None,
                   help="where the test images are (default: the run's data dir, then $ARCDIST_DATA_DIR, ./data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.every is not None and args.every < 1:
            raise ExploreError(f"--every {args.every}: give a positive number of epochs")
        if args.points < 0:
            raise ExploreError(f"--points {args.points}: give a positive number, or 0 for all")
        info = build_page(Path(args.folder), args.out, args.every, args.points, args.max_mb, args.data_dir)
    except (ExploreError, OSError) as e:
        print(f"arcdist.explore: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    for w in info["warnings"]:
        print(f"arcdist.explore: warning: {w}", file=sys.stderr)
    print(f"explorer: {info['path']} ({info['panels']} panels, {len(info['epochs'])} of {info['all_epochs']} epochs, "
          f"{info['points']:,} points per panel, {info['bytes'] / 1e6:.1f} MB)")
    return Exit.OK
