"""Sub-center ArcFace (Deng et al. 2020): K sub-centres per class, the class's cosine that of its nearest
sub-centre, then ArcFace's margin. Row c*K + k of W is sub-centre k of class c (pytorch-metric-learning's
`SubCenterArcFaceLoss` layout, its test reference)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arcdist.directions import spread
from arcdist.heads.arcface import ArcFaceConfig, ArcFaceHead
from arcdist.heads.base import HeadConfig, cosines, even_directions, register_head, slots


@dataclass(frozen=True)
class SubCenterConfig(ArcFaceConfig):
    sub_centers: int = 3  # K, sub-centres per class (the paper's and pytorch-metric-learning's 3)

    def checks(self):
        return super().checks() + [(self.sub_centers >= 1, f"head.sub_centers must be >= 1 (got {self.sub_centers});"
                                                           " pass --set head.sub_centers=3")]


@register_head("subcenter")
class SubCenterArcFaceHead(ArcFaceHead):
    """ArcFace on the max over each class's K sub-centres; plots draw each class's dominant sub-centre as its W."""

    Config = SubCenterConfig

    @classmethod
    def rows(cls, cfg: HeadConfig) -> int:
        return cfg.num_classes * cfg.sub_centers

    def even_init(self, cfg: HeadConfig, feature_dim: int) -> torch.Tensor:
        """Each class's sub-centres a few degrees apart around its even direction (identical ones would tie in the
        max, and all but one would never receive a gradient): within +-1/8 of a class's 360/C degrees, along the
        circle in 2-D and along a fixed direction perpendicular to the class's in d > 2."""
        k, c = self.opts.sub_centers, cfg.num_classes
        offsets = (torch.arange(k, dtype=torch.float) - (k - 1) / 2) / (4 * k)
        if feature_dim == 2:
            return even_directions((slots(cfg).float()[:, None] + offsets[None, :]).flatten(), c)
        base = spread(c, feature_dim)[slots(cfg)]
        side = torch.randn(c, feature_dim, generator=torch.Generator().manual_seed(1))
        side = F.normalize(side - (side * base).sum(1, keepdim=True) * base, dim=1)
        tilt = torch.tan(offsets * (2 * math.pi / c))
        return F.normalize(base[:, None, :] + tilt[None, :, None] * side[:, None, :], dim=2).reshape(c * k, -1)

    def all_cosines(self, x: torch.Tensor) -> torch.Tensor:
        """cos to every sub-centre, (N, C, K)."""
        return cosines(x, self.weight).view(x.shape[0], self.cfg.num_classes, self.opts.sub_centers)

    def cosines(self, x):
        return self.all_cosines(x).amax(dim=2)

    def geometry(self):
        """W: one direction per class for the plots, the sub-centre nearest the mean of the class's sub-centres;
        `sub_centers`: all of them (unit rows)."""
        w = self.weight.detach().float().cpu().view(self.cfg.num_classes, self.opts.sub_centers, -1)
        unit = F.normalize(w, dim=2)
        mean = F.normalize(unit.sum(1), dim=1)
        pick = (unit * mean[:, None]).sum(2).argmax(1)
        return dict(W=unit[torch.arange(w.shape[0]), pick], sub_centers=unit.flatten(0, 1))

    def caption(self, epoch_progress):
        return f"{super().caption(epoch_progress)}, {self.opts.sub_centers} sub-centres"

    @staticmethod
    def settings(cfg):
        return f"{ArcFaceHead.settings(cfg)}, K {cfg.sub_centers}"

