"""Softmax: the linear classifier W x + b on the feature, the post's "before"."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arcdist.heads.base import Head, HeadConfig, register_head


@register_head("softmax")
class SoftmaxHead(Head):
    """Linear classifier W x + b; its features grow along rays, so it is judged by angle."""

    drawn = dict(b="bias")
    baseline = True

    @classmethod
    def extra_params(cls, cfg, feature_dim):
        return cfg.num_classes  # b

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.bias = nn.Parameter(torch.zeros(cfg.num_classes))

    def train_logits(self, x, labels, epoch_progress):
        return self.scores(x)

    def scores(self, features):
        return F.linear(features.float(), self.weight.float(), self.bias.float())

    def caption(self, epoch_progress):
        return f"{self.kind}: W x + b, no margin"

    @staticmethod
    def settings(cfg):
        return "W x + b"
