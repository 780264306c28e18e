"""SphereFace (A-Softmax, Liu et al. 2017): |x| psi(theta_y), psi(t) = (-1)^k cos(m t) - 2k, with the release's
lambda annealing, which mixes softmax into the target: |x| (lambda cos + psi) / (1 + lambda)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arcdist.heads.base import Head, KindConfig, cosines, register_head


def cos_multiple(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) from cos(theta) by the multiple-angle formula, sum_n (-1)^n C(m, 2n) c^(m-2n) (1-c^2)^n:
    a polynomial, so its gradient stays finite at cos = +-1 (acos's does not)."""
    sin2 = 1.0 - cos * cos
    return sum((-1) ** n * math.comb(m, 2 * n) * cos ** (m - 2 * n) * sin2 ** n for n in range(m // 2 + 1))


def sphere_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]: monotonically decreasing over
    [0, pi], continuous, equal to cos(m theta) below pi/m."""
    with torch.no_grad():
        k = torch.floor(torch.acos(cos) * m / math.pi).clamp(0, m - 1)
    return (1.0 - 2.0 * (k % 2)) * cos_multiple(cos, m) - 2.0 * k


def sphere_lambda(anneal: tuple, iteration: float) -> float:
    """The annealing: lambda = max(min, base (1 + gamma iteration)^-power)."""
    base, gamma, power, low = anneal
    return max(low, base * (1.0 + gamma * iteration) ** -power)


@dataclass(frozen=True)
class SphereFaceConfig(KindConfig):
    margin: float = 4.0  # m, the multiplicative angle (an integer 1..8)
    scale: float = 1.0  # a constant factor on the logits (the paper's 1)
    # lambda = max(min, base * (1 + gamma * iteration) ** -power), iterations counted in steps
    anneal: tuple = (1000.0, 0.12, 1.0, 5.0)  # (base, gamma, power, min): the SphereFace release's schedule

    def checks(self):
        m = self.margin
        return [(self.scale > 0, f"head.scale must be > 0 (got {self.scale}); pass --set head.scale=1"),
                (m >= 1 and m == int(m) and m <= 8,
                 f"head.margin must be an integer 1..8 for sphereface (got {m}); pass --set head.margin=4"),
                (len(self.anneal) == 4 and all(v >= 0 for v in self.anneal),
                 f"head.anneal must be (base, gamma, power, min) >= 0 (got {self.anneal}); "
                 "pass --set head.anneal=(1000,0.12,1,5)")]


@register_head("sphereface")
class SphereFaceHead(Head):
    """A-Softmax: W normalised, no bias, logits |x| cos(theta_j); the target |x| (lambda cos + psi) / (1 + lambda)."""

    Config = SphereFaceConfig

    def lam(self, epoch_progress: float) -> float:
        """The annealing's lambda after `epoch_progress` epochs (it counts iterations)."""
        return sphere_lambda(self.opts.anneal, epoch_progress * self.steps_per_epoch)

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        norm = x.norm(dim=1, keepdim=True)
        cos_y = cos.gather(1, labels[:, None])
        lam = self.lam(epoch_progress)
        target = (lam * cos_y + sphere_psi(cos_y, int(self.opts.margin))) / (1.0 + lam)
        return self.opts.scale * norm * cos.scatter(1, labels[:, None], target)

    def scores(self, features):
        return features.float().norm(dim=1, keepdim=True) * cosines(features, self.weight)

    def margin_now(self, epoch_progress):
        return self.opts.margin

    def caption(self, epoch_progress):
        return f"sphereface: m = {int(self.opts.margin)} (times theta), lambda = {self.lam(epoch_progress):.1f}"

    @staticmethod
    def settings(cfg):
        base, gamma, power, low = cfg.anneal
        return f"m {int(cfg.margin)}, lambda max({low:g}, {base:g} (1 + {gamma:g} i)^-{power:g})"
