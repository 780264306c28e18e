"""The combined margin s (cos(m1 theta_y + m2) - m3) (insightface): (1, m, 0) is ArcFace, (1, 0, m) CosFace."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arcdist.heads.arcface import arcface_target
from arcdist.heads.base import ScaledHead, WarmupConfig, cosines, register_head


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


@dataclass(frozen=True)
class CombinedConfig(WarmupConfig):
    margins: tuple = (1.0, 0.1, 0.05)  # (m1, m2 radians, m3 cosine) of s (cos(m1 theta + m2) - m3)

    def checks(self):
        m = self.margins
        return super().checks() + [
            (len(m) == 3 and m[0] >= 1 and 0 <= m[1] < math.pi / 2 and 0 <= m[2] < 1,
             f"head.margins must be (m1 >= 1, m2 in [0, pi/2), m3 in [0, 1)) for combined (got {m}); "
             "pass --set head.margins=(1.0,0.1,0.05)")]


@register_head("combined")
class CombinedHead(ScaledHead):
    Config = CombinedConfig

    def margins(self, epoch_progress: float) -> tuple[float, float, float]:
        """(m1, m2, m3) with the warm-up: each moves linearly from no margin (1, 0, 0)."""
        f = self.opts.fraction(epoch_progress)
        m1, m2, m3 = self.opts.margins
        return 1.0 + (m1 - 1.0) * f, m2 * f, m3 * f

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        target = combined_target(cos.gather(1, labels[:, None]), *self.margins(epoch_progress))
        return self.logit_scale(x) * cos.scatter(1, labels[:, None], target)

    def margin_now(self, epoch_progress):
        return self.margins(epoch_progress)[1]

    def wedge(self, epoch_progress):
        m1, m2, _ = self.margins(epoch_progress)
        return m2 if m1 == 1.0 else 0.0

    def caption(self, epoch_progress):
        m1, m2, m3 = self.margins(epoch_progress)
        return f"combined: {self.scale_text()}, (m1, m2, m3) = ({m1:.2f}, {m2:.2f}, {m3:.2f})"

    @staticmethod
    def settings(cfg):
        return f"{ScaledHead.settings(cfg)}, (m1, m2, m3) = ({', '.join(f'{m:g}' for m in cfg.margins)})"
