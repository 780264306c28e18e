"""Seconds per epoch of the retrieval metrics (arcdist.evaluation.retrieval) on N test features of D dimensions:

    python bench/retrieval.py [--n 10000] [--dims 2,3,128] [--repeats 3]

Synthetic features (ten Gaussian classes around W's even spread); prints the median of the repeats per D and
distance. Name the CPU beside the figure: `grep -m1 'model name' /proc/cpuinfo`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from arcdist.directions import spread  # noqa: E402
from arcdist.evaluation.retrieval import retrieval_metrics  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dims", default="2,3,128")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    retrieval_metrics(torch.randn(100, 2), torch.arange(100) % 10)  # imports and first-call costs
    for dim in (int(d) for d in a.dims.split(",")):
        y = torch.randint(0, 10, (a.n,), generator=g)
        x = 4 * spread(10, dim)[y] + torch.randn(a.n, dim, generator=g)
        for by in ("angle", "position"):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                m = retrieval_metrics(x, y, by=by)
                times.append(time.perf_counter() - t)
            print(f"n={a.n} dim={dim} by={by}: {statistics.median(times):.2f} s (median of {a.repeats}); "
                  f"P@1 {m['precision_at_1']:.4f} MAP@R {m['mean_average_precision_at_r']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
