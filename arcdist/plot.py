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
        why = "a run that ended before its first epoch has none" if (args.run_dir / "config.json").is_file() else \
            "pass a run folder written by arcdist.train"
        print(f"arcdist.plot: error: {args.run_dir} has no features/ folder; {why}", file=sys.stderr)
        return Exit.BAD_INPUT
    from arcdist import figures

    try:
        written = figures.render_all(args.run_dir)
    except OSError as e:  # a read-only copy of a run, a full disk
        print(f"arcdist.plot: error: cannot write {args.run_dir / 'plots'} ({e.strerror or e}); plot a writable "
              "copy of the run folder", file=sys.stderr)
        return Exit.BAD_INPUT
    print(f"wrote {len(written)} files under {args.run_dir / 'plots'}")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
