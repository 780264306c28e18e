"""`python -m arcdist.plot RUN_DIR`: re-render every plot and the GIF from saved features, no training."""
from __future__ import annotations

import sys
from pathlib import Path

from arcdist.cli import ArgumentParser
from arcdist.errors import Exit


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(prog="arcdist.plot", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.run_dir / "features").is_dir():
        print(f"arcdist.plot: error: {args.run_dir} has no features/ folder; pass a run folder written by "
              "arcdist.train", file=sys.stderr)
        return Exit.BAD_INPUT
    from arcdist import figures

    written = figures.render_all(args.run_dir)
    print(f"wrote {len(written)} files under {args.run_dir / 'plots'}")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
