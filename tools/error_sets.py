"""Which test images two groups of runs get wrong, image by image, from their saved features.

    python tools/error_sets.py --a RUN [RUN ...] --b RUN [RUN ...] [--epoch N]

Each run's prediction is the nearest class direction of its saved W (argmax cos, the angular heads' rule) on its
test features at epoch N (default: the last saved, `features/test-epoch-*.npz`). Runs are paired in the order
given (A's first run with B's first, usually the same seed). Per pair: A's and B's errors, how many of A's errors
B gets right ("fixed") and how many new errors B makes; then the errors every run of a group shares. The test
set's order is checked through the saved labels, so runs saved with a different order are refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def errors(run: Path, epoch: int | None = None) -> tuple[set[int], np.ndarray]:
    """Indices of the test images the run gets wrong at `epoch` (last saved if None), and the labels."""
    files = sorted((run / "features").glob("test-epoch-*.npz" if epoch is None else f"test-epoch-{epoch:04d}.npz"))
    if not files:
        raise SystemExit(f"error_sets: {run} has no saved test features"
                         + (f" for epoch {epoch}" if epoch is not None else "") + "; run it with --plot-every 1")
    saved = np.load(files[-1])
    feats, w, labels = saved["features"].astype(np.float64), saved["W"].astype(np.float64), saved["labels"]
    cos = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    return set(np.flatnonzero(cos.argmax(1) != labels).tolist()), labels


def compare(a: list[Path], b: list[Path], epoch: int | None = None) -> dict:
    """Per-pair counts and the errors shared by every run of each group."""
    if len(a) != len(b):
        raise SystemExit(f"error_sets: {len(a)} runs in --a but {len(b)} in --b; give them in pairs")
    got = [errors(r, epoch) for r in a + b]
    if any(not np.array_equal(got[0][1], labels) for _, labels in got):
        raise SystemExit("error_sets: the runs saved their test features in different orders; compare runs of "
                         "one world size")
    ea, eb = [e for e, _ in got[: len(a)]], [e for e, _ in got[len(a):]]
    names = [r.name for r in a + b]
    label = (lambda r: r.name) if len(set(names)) == len(names) else (lambda r: f"{r.parent.name}/{r.name}")
    pairs = [dict(a=label(ra), b=label(rb), errors_a=len(x), errors_b=len(y), fixed=len(x - y), new=len(y - x))
             for ra, rb, x, y in zip(a, b, ea, eb)]
    return dict(pairs=pairs, shared_a=len(set.intersection(*ea)), shared_b=len(set.intersection(*eb)),
                shared_both=len(set.intersection(*ea, *eb)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="+", type=Path, required=True)
    p.add_argument("--b", nargs="+", type=Path, required=True)
    p.add_argument("--epoch", type=int, default=None)
    args = p.parse_args(argv)
    r = compare(args.a, args.b, args.epoch)
    print("| A run | B run | A's errors | B's errors | A's errors B gets right | B's new errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for q in r["pairs"]:
        print(f"| {q['a']} | {q['b']} | {q['errors_a']} | {q['errors_b']} | {q['fixed']} | {q['new']} |")
    print(f"\nErrors shared by every A run: {r['shared_a']}; by every B run: {r['shared_b']}; "
          f"by all runs: {r['shared_both']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
