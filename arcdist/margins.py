"""The margin-loss family's formulas, each a pure function: fp32 tensors in, fp32 out (the heads in arcdist.heads
apply them). Tested against float64 references and pytorch-metric-learning (tests/test_heads.py)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arcdist.config import HeadConfig


def cosines(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos(theta_j) between each feature and each row of W, (N, C); a zero feature has cosine 0."""
    x = F.normalize(features.float(), dim=1, eps=1e-6)
    w = F.normalize(weight.float(), dim=1, eps=1e-6)
    return (x @ w.t()).clamp(-1.0, 1.0)


def arcface_target(cos_y: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(theta_y + m); past theta_y + m > pi it would turn back up, so it continues monotonically as
    cos(theta_y) - m sin(m) there (insightface's fallback)."""
    if margin == 0.0:
        return cos_y
    # clamp inside the sqrt: its derivative is infinite at cos = +-1; clamp passes a zero gradient there
    sin_y = (1.0 - cos_y * cos_y).clamp_min(1e-7).sqrt()
    phi = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    return torch.where(cos_y > math.cos(math.pi - margin), phi, cos_y - margin * math.sin(margin))


def arc_margin_logits(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      scale: float | torch.Tensor, margin: float) -> torch.Tensor:
    """ArcFace logits: s*cos(theta_y + m) for the target, s*cos(theta_j) otherwise (s a number, or (N, 1))."""
    cos = cosines(features, weight)
    if margin == 0.0:
        return scale * cos
    phi = arcface_target(cos.gather(1, labels[:, None]), margin)
    return scale * cos.scatter(1, labels[:, None], phi)


def cos_multiple(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) from cos(theta) by the multiple-angle formula, sum_n (-1)^n C(m, 2n) c^(m-2n) (1-c^2)^n:
    a polynomial, so its gradient stays finite at cos = +-1 (acos's does not)."""
    sin2 = 1.0 - cos * cos
    return sum((-1) ** n * math.comb(m, 2 * n) * cos ** (m - 2 * n) * sin2 ** n for n in range(m // 2 + 1))


def sphere_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]: monotonically
    decreasing over [0, pi], continuous, equal to cos(m theta) below pi/m."""
    with torch.no_grad():
        k = torch.floor(torch.acos(cos) * m / math.pi).clamp(0, m - 1)
    return (1.0 - 2.0 * (k % 2)) * cos_multiple(cos, m) - 2.0 * k


def combined_target(cos_y: torch.Tensor, m1: float, m2: float, m3: float) -> torch.Tensor:
    """cos(m1 theta_y + m2) - m3. With m1 = 1 this is ArcFace's target (and its fallback) minus m3, so
    (1, m, 0) is ArcFace and (1, 0, m) CosFace exactly; with m1 > 1 the angle t = m1 theta + m2 continues past pi
    as SphereFace's psi does, (-1)^k cos(t) - 2k with k = floor(t / pi), monotonic and continuous."""
    if m1 == 1.0:
        return arcface_target(cos_y, m2) - m3
    # theta by atan2 with the sine clamped away from 0: acos' derivative is infinite at cos = +-1, this one is 0 there
    theta = torch.atan2((1.0 - cos_y * cos_y).clamp_min(1e-12).sqrt(), cos_y)
    t = m1 * theta + m2
    with torch.no_grad():
        k = torch.floor(t / math.pi)
    return (1.0 - 2.0 * (k % 2)) * torch.cos(t) - 2.0 * k - m3


def sphere_lambda(anneal: tuple, iteration: float) -> float:
    """SphereFace's annealing: lambda = max(min, base (1 + gamma iteration)^-power)."""
    base, gamma, power, low = anneal
    return max(low, base * (1.0 + gamma * iteration) ** -power)


def warmup_fraction(cfg: HeadConfig, epoch_progress: float) -> float:
    """Fraction of the margin in force after `epoch_progress` epochs (the linear margin warm-up)."""
    if cfg.margin_warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch_progress / cfg.margin_warmup_epochs)


def margin_at(cfg: HeadConfig, epoch_progress: float) -> float:
    """The kind's margin (its own unit) after `epoch_progress` epochs, with the linear warm-up; combined: m2."""
    margin = cfg.margins[1] if cfg.kind == "combined" else cfg.margin
    return margin * warmup_fraction(cfg, epoch_progress)


def scale_setting(cfg: HeadConfig) -> str:
    """head.scale_by in a few words: 's 16', 's = |x|', 's learned from 16'."""
    return {"norm": "s = |x|", "learned": f"s learned from {cfg.scale:g}"}.get(cfg.scale_by, f"s {cfg.scale:g}")


