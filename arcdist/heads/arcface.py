"""ArcFace: s cos(theta_y + m), the additive angular margin (Deng et al. 2019; the post's ArcMargin).

Past theta_y + m > pi the target would turn back up, so it continues monotonically as cos(theta_y) - m sin(m)
(insightface's fallback); with `easy_margin` (insightface's option) the margin applies only where cos(theta_y) > 0
and the target is the plain cosine elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arcdist.heads.base import ScaledHead, WarmupConfig, cosines, register_head


def arcface_target(cos_y: torch.Tensor, margin: float, easy: bool = False) -> torch.Tensor:
    """cos(theta_y + m) with the fallback past pi - m (or, `easy`, the plain cosine where cos_y <= 0)."""
    if margin == 0.0:
        return cos_y
    # clamp inside the sqrt: its derivative is infinite at cos = +-1; clamp passes a zero gradient there
    sin_y = (1.0 - cos_y * cos_y).clamp_min(1e-7).sqrt()
    phi = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    if easy:
        return torch.where(cos_y > 0, phi, cos_y)
    return torch.where(cos_y > math.cos(math.pi - margin), phi, cos_y - margin * math.sin(margin))


def arc_margin_logits(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      scale: float | torch.Tensor, margin: float, easy: bool = False) -> torch.Tensor:
    """ArcFace logits: s*cos(theta_y + m) for the target, s*cos(theta_j) otherwise (s a number, or (N, 1))."""
    return arc_logits(cosines(features, weight), labels, scale, margin, easy)


def arc_logits(cos: torch.Tensor, labels: torch.Tensor, scale: float | torch.Tensor, margin: float,
               easy: bool = False) -> torch.Tensor:
    """ArcFace logits from the cosines (N, C)."""
    if margin == 0.0:
        return scale * cos
    phi = arcface_target(cos.gather(1, labels[:, None]), margin, easy)
    return scale * cos.scatter(1, labels[:, None], phi)


@dataclass(frozen=True)
class ArcFaceConfig(WarmupConfig):
    margin: float = 0.2  # m, added to the target's angle (radians; 0.2 rad = 11.5 deg)
    easy_margin: bool = False  # insightface's easy_margin: the margin only where theta_y < 90 deg

    def checks(self):
        return super().checks() + [(0 <= self.margin < math.pi / 2,
                                    f"head.margin must be in [0, pi/2) radians for arcface (got {self.margin}); "
                                    "pass --set head.margin=0.2")]


@register_head("arcface")
class ArcFaceHead(ScaledHead):
    """The post's ArcMargin head (additive angular margin)."""

    Config = ArcFaceConfig

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        """cos(theta_j) to each class (sub-center ArcFace: to its nearest sub-centre)."""
        return cosines(x, self.weight)

    def train_logits(self, x, labels, epoch_progress):
        return arc_logits(self.cosines(x), labels, self.logit_scale(x), self.margin_now(epoch_progress),
                          self.opts.easy_margin)

    def scores(self, features):
        return self.cosines(features)

    def margin_now(self, epoch_progress):
        return self.opts.margin * self.opts.fraction(epoch_progress)

    def wedge(self, epoch_progress):
        return self.margin_now(epoch_progress)

    def caption(self, epoch_progress):
        easy = ", easy" if self.opts.easy_margin else ""
        return f"{self.kind}: {self.scale_text()}, margin {math.degrees(self.margin_now(epoch_progress)):.1f} deg{easy}"

    @staticmethod
    def settings(cfg):
        return f"{ScaledHead.settings(cfg)}, m {cfg.margin:g} rad" + (", easy margin" if cfg.easy_margin else "")


ArcMarginHead = ArcFaceHead  # the post's name
