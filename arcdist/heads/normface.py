"""NormFace: s cos(theta_j), no margin (Wang et al. 2017)."""
from __future__ import annotations

from arcdist.heads.base import ScaledHead, cosines, register_head


@register_head("normface")
class NormFaceHead(ScaledHead):
    def train_logits(self, x, labels, epoch_progress):
        return self.logit_scale(x) * cosines(x, self.weight)
