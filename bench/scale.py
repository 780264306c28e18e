"""What an epoch's evaluation costs as the class count and the test set grow: C = 10, 100, 1,000 classes and
N = 10,000, 100,000 test features, in 2-D and 128-D.

    python bench/scale.py [--classes 10,100,1000] [--n 10000,100000] [--dims 2,128] [--out FILE.md]

Per cell, seconds (one run after a warm-up): `init` W's even spread (arcdist.directions, once per run, not per
epoch); `metrics` the separation figures (arcdist.evaluation.metrics, with the head's scores); `retrieval` P@1,
R-precision and MAP@R (arcdist.evaluation.retrieval: above 10,000 features a seeded sample of 10,000 queries
against all N); `plots` the raw and circle figures of the epoch (2-D only; the run's plots draw the test split and a
5,000-image train sample). Synthetic features: Gaussian classes around W's rows. Name the CPU beside the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from arcdist.directions import spread  # noqa: E402
from arcdist.evaluation.metrics import separation_metrics  # noqa: E402
from arcdist.evaluation.retrieval import retrieval_metrics  # noqa: E402
from arcdist.heads import cosines  # noqa: E402


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cell(classes: int, n: int, dim: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    init = seconds(lambda: spread(classes, dim))
    W = spread(classes, dim)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 4 * W[y] + torch.randn(n, dim, generator=g)
    out = dict(init=init, metrics=seconds(lambda: separation_metrics(x, y, W, scores=cosines(x, W))),
               retrieval=seconds(lambda: retrieval_metrics(x, y)))
    if dim == 2:
        from arcdist import figures

        def draw():
            for fig in (figures.raw_figure(x.numpy(), y.numpy(), 6.0, "t", geometry={"W": W.numpy()}),
                        figures.circle_figure(x.numpy(), y.numpy(), W.numpy(), 0.2, "t")):
                fig.savefig("/dev/null", format="png")
                figures.plt.close(fig)
        out["plots"] = seconds(draw)
    return out


def main() -> int:
    import os
    import tempfile

    os.environ["ARCDIST_CACHE_DIR"] = tempfile.mkdtemp(prefix="arcdist-scale-")  # W's spread computed, not cached
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--n", default="10000,100000")
    p.add_argument("--dims", default="2,128")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    cell(10, 1000, 2)  # imports and first-call costs
    lines = ["| classes | test features | D | W init (once) | metrics | retrieval | plots |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for dim in map(int, a.dims.split(",")):
        for classes in map(int, a.classes.split(",")):
            for n in map(int, a.n.split(",")):
                c = cell(classes, n, dim)
                lines.append(f"| {classes:,} | {n:,} | {dim} | {c['init']:.2f} | {c['metrics']:.2f} | "
                             f"{c['retrieval']:.2f} | {c['plots']:.2f} |" if "plots" in c else
                             f"| {classes:,} | {n:,} | {dim} | {c['init']:.2f} | {c['metrics']:.2f} | "
                             f"{c['retrieval']:.2f} | - |")
                print(lines[-1], flush=True)
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
