"""CosFace: s (cos(theta_y) - m), an additive cosine margin (Wang et al. 2018)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from arcdist.heads.base import ScaledHead, WarmupConfig, cosines, register_head


@dataclass(frozen=True)
class CosFaceConfig(WarmupConfig):
    margin: float = 0.1  # m, subtracted from the target's cosine (unitless, in [0, 1))

    def checks(self):
        return super().checks() + [(0 <= self.margin < 1, f"head.margin must be in [0, 1) for cosface, a cosine "
                                                          f"margin (got {self.margin}); pass --set head.margin=0.1")]


@register_head("cosface")
class CosFaceHead(ScaledHead):
    Config = CosFaceConfig

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        return self.logit_scale(x) * (cos - self.margin_now(epoch_progress) * F.one_hot(labels, cos.shape[1]))

    def margin_now(self, epoch_progress):
        return self.opts.margin * self.opts.fraction(epoch_progress)

    def caption(self, epoch_progress):
        return f"cosface: {self.scale_text()}, cosine margin {self.margin_now(epoch_progress):.2f}"

    @staticmethod
    def settings(cfg):
        return f"{ScaledHead.settings(cfg)}, m {cfg.margin:g}"
