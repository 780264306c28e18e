"""Why ArcFace with a fixed s lags in 2-D, measured on the loss itself (results/losses/README.md, "ArcFace first").

    python tools/arcface_mechanism.py [RUN_DIR ...]   # -> results/losses/arcface-mechanism.{png,md}

1. One sample, ten class directions evenly spread (36 deg apart, as A6's frozen W and the losses grid's start):
   its loss and the force that turns it, |dL/dtheta|, against its angle theta to its own direction and its norm
   |x|, for ArcFace with s = 16 (m = 0.2) and with s = |x| (the same margin). A fixed s makes both independent of
   |x|: a clean digit on its direction keeps a loss floor and an ambiguous one past the boundary pulls at full
   strength, and the net has no way to say "unsure". With s = |x| both scale with the norm the net chooses.
2. On trained runs' saved train features (features/train-epoch-*.npz): which samples carry the turning force,
   under the run's own s = |x| and under a fixed s = 16 applied to the same features: the share of the total
   |dL/dtheta| carried by the misclassified samples and by the lowest-norm tenth.
Formulas are arcdist.heads' (tested against float64 references in tests/test_heads.py).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arcdist.heads.arcface import arc_margin_logits  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "results" / "losses"  # where its table and figure go
S, M = 16.0, 0.2


def even_w(n: int = 10) -> torch.Tensor:
    a = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([a.cos(), a.sin()], 1)


def loss_and_turning(theta: torch.Tensor, r: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
                     scale_by_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss and |dL/dtheta| for features at angle `theta` (radians, from W's row 0 rotated to the
    label's direction) and norm `r`."""
    base = torch.atan2(w[labels, 1], w[labels, 0])
    theta = theta.clone().double().requires_grad_(True)
    x = torch.stack([r * torch.cos(base + theta), r * torch.sin(base + theta)], 1)
    s = x.norm(dim=1, keepdim=True) if scale_by_norm else S
    loss = F.cross_entropy(arc_margin_logits(x.float(), w.float(), labels, s, M).double(), labels, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), theta)
    return loss.detach(), grad.abs()


def analytic() -> tuple[list[str], dict]:
    w = even_w()
    theta = torch.linspace(0, math.radians(60), 121, dtype=torch.float64)
    label = torch.zeros(len(theta), dtype=torch.long)
    curves = {"fixed s = 16": loss_and_turning(theta, torch.full_like(theta, 1.0), w, label, False)}
    for r in (2.0, 8.0, 32.0):
        curves[f"s = |x|, |x| = {r:g}"] = loss_and_turning(theta, torch.full_like(theta, r), w, label, True)
    rows = ["| logits | loss at theta = 0 | loss at 10 deg | loss at 25 deg (past the 18 deg boundary) "
            "| abs(dL/dtheta) at 10 deg | at 25 deg |", "| --- | --- | --- | --- | --- | --- |"]
    at = {d: int(round(d / 0.5)) for d in (0, 10, 25)}
    for name, (loss, turn) in curves.items():
        rows.append(f"| {name} | {loss[at[0]]:.4f} | {loss[at[10]]:.4f} | {loss[at[25]]:.3f} | {turn[at[10]]:.3f} "
                    f"| {turn[at[25]]:.3f} |")
    return rows, dict(theta=theta, curves=curves)


def trained(run_dirs: list[Path]) -> list[str]:
    rows = ["| run (its train features at the last saved epoch) | logits scored | misclassified | share of the total "
            "abs(dL/dtheta) on: the misclassified | the lowest-norm tenth | the samples right by >= 10 deg "
            "| share of the loss on those |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in run_dirs:
        files = sorted((run / "features").glob("train-epoch-*.npz"))
        if not files:
            continue
        d = np.load(files[-1])
        x = torch.from_numpy(d["features"]).double()
        y = torch.from_numpy(d["labels"]).long()
        w = torch.from_numpy(d["W"]).double()
        wn = F.normalize(w, dim=1)
        r = x.norm(dim=1)
        theta = torch.atan2(x[:, 1], x[:, 0]) - torch.atan2(wn[y, 1], wn[y, 0])
        theta = torch.atan2(torch.sin(theta), torch.cos(theta))  # to (-pi, pi]
        cos = F.normalize(x, dim=1) @ wn.t()
        wrong = cos.argmax(1) != y
        low = r <= torch.quantile(r, 0.1)
        own = cos.gather(1, y[:, None]).squeeze(1)
        other = cos.masked_fill(F.one_hot(y, w.shape[0]).bool(), -2).max(1).values
        clean = (torch.acos(other.clamp(-1, 1)) - torch.acos(own.clamp(-1, 1))) >= math.radians(10)
        for by_norm in (True, False):
            loss, turn = loss_and_turning(theta, r, w, y, by_norm)
            share = lambda mask, v=turn: f"{(v[mask].sum() / v.sum()).item():.1%}"  # noqa: E731
            rows.append(f"| {run.name} (epoch {int(d['epoch'])}) | {'s = abs(x)' if by_norm else 's = 16'} "
                        f"| {int(wrong.sum())} of {len(y)} | {share(wrong)} | {share(low)} "
                        f"| {share(clean)} ({int(clean.sum())} samples) | {share(clean, loss)} |")
    return rows


def figure(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deg = torch.rad2deg(data["theta"]).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, (loss, turn) in data["curves"].items():
        style = dict(lw=2.5, color="black") if name.startswith("fixed") else dict(lw=1.5)
        axes[0].plot(deg, loss.numpy(), label=name, **style)
        axes[1].plot(deg, turn.numpy(), label=name, **style)
    for ax, title in zip(axes, ("per-sample loss", "turning force |dL/dtheta|")):
        ax.axvline(18, color="grey", ls=":", lw=1)
        ax.set_xlabel("angle to own class direction (deg); boundary at 18")
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("ArcFace, m = 0.2, ten directions 36 deg apart: fixed s = 16 against s = |x|", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    rows, data = analytic()
    figure(data, HERE / "arcface-mechanism.png")
    text = ["# ArcFace in 2-D: the loss with a fixed s and with s = |x|", "",
            "Made by `python tools/arcface_mechanism.py RUN_DIR ...`.", "",
            "## One sample against its angle and norm (W evenly spread, m = 0.2)", "", *rows, "",
            "![loss and turning force](arcface-mechanism.png)", ""]
    runs = [Path(a) for a in argv]
    if runs:
        text += ["## Trained runs: who carries the turning force", "", *trained(runs), ""]
    (HERE / "arcface-mechanism.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", help="trained runs with features/train-epoch-*.npz")
    main(parser.parse_args().run_dirs)
