"""Center loss (Wen et al. 2016): softmax plus lambda/2 |x - c_y|^2, the centers moved by their own rule."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from arcdist.heads.base import HeadConfig, KindConfig, register_head
from arcdist.heads.softmax import SoftmaxHead


@dataclass(frozen=True)
class CenterConfig(KindConfig):
    center_weight: float = 0.1  # lambda of softmax + lambda * center loss
    center_alpha: float = 0.5  # the centers' own learning rate (Wen et al.'s alpha), in (0, 1]

    def checks(self):
        return [(self.center_weight >= 0, f"head.center_weight must be >= 0 (got {self.center_weight}); "
                                          "pass --set head.center_weight=0.1"),
                (0 < self.center_alpha <= 1, f"head.center_alpha must be in (0, 1] (got {self.center_alpha}); "
                                             "pass --set head.center_alpha=0.5")]


@register_head("center")
class CenterLossHead(SoftmaxHead):
    """Softmax plus lambda times the center loss 1/2 |x_i - c_{y_i}|^2 (mean over the batch, as the paper's layer).

    The centers are not trained by backpropagation: after each applied step they move by the paper's rule,
    c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), over the global batch (sums and counts are
    summed over ranks, so every rank holds the same centers). They start at 0 and are saved with the model.
    """

    Config = CenterConfig
    drawn = dict(b="bias", centers="centers")
    judged_by = "position"
    baseline = False

    @classmethod
    def extra_params(cls, cfg, feature_dim):
        return super().extra_params(cfg, feature_dim) + cfg.num_classes * feature_dim  # b and the centers

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.register_buffer("centers", torch.zeros(cfg.num_classes, feature_dim))
        self.pending: torch.Tensor | None = None  # the next update, computed with this step's loss

    def loss(self, logits, features, labels):
        return super().loss(logits, features, labels) + self.center_loss(features, labels)

    def center_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """lambda/2 mean |x_i - c_{y_i}|^2; also computes the centers' next update (applied by after_step)."""
        x = features.float()
        loss = 0.5 * self.opts.center_weight * (x - self.centers[labels]).pow(2).sum(1).mean()
        with torch.no_grad():
            sums = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - x)
            counts = torch.bincount(labels, minlength=self.centers.shape[0]).to(sums.dtype)
            both = torch.cat([sums.flatten(), counts])
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(both)
            sums, counts = both[:sums.numel()].view_as(sums), both[sums.numel():]
            self.pending = sums / (1.0 + counts[:, None])
        return loss

    def after_step(self):
        if self.pending is not None:
            self.centers.sub_(self.opts.center_alpha * self.pending)
            self.pending = None

    def caption(self, epoch_progress):
        return f"center: W x + b and {self.opts.center_weight:g} x center loss (centers drawn in the raw plot)"

    @staticmethod
    def settings(cfg):
        return f"lambda {cfg.center_weight:g}, alpha {cfg.center_alpha:g}"
