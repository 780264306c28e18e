"""AdaCos (Zhang et al. 2019): s cos(theta_j) with no margin and an adaptive s, so no scale to tune.

Dynamic AdaCos sets s before each training batch from that batch's statistics at the previous s:
B_avg = mean over samples of sum_{j != y} exp(s cos theta_j), theta_med = median of theta_y, and
s <- log(B_avg) / cos(min(pi/4, theta_med)); it starts (and fixed AdaCos stays) at sqrt(2) log(C - 1). The
statistics are of the global batch (summed and gathered over ranks), so every rank holds the same s; s is a
buffer, saved with the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arcdist.heads.base import Head, HeadConfig, KindConfig, cosines, register_head


def fixed_scale(num_classes: int) -> float:
    """The paper's fixed s = sqrt(2) log(C - 1)."""
    return math.sqrt(2.0) * math.log(max(num_classes - 1, 2))


def global_batch(values: torch.Tensor) -> torch.Tensor:
    """`values` (1-D) of every rank's batch, concatenated. Every rank holds batch_size / world rows (the Trainer
    refuses a batch that does not split evenly), so no count is read back to the host: no sync per step."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


@dataclass(frozen=True)
class AdaCosConfig(KindConfig):
    dynamic: bool = True  # dynamic AdaCos (s from each batch); false: fixed AdaCos, s = sqrt(2) log(C - 1)


@register_head("adacos")
class AdaCosHead(Head):
    Config = AdaCosConfig

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.register_buffer("s", torch.tensor(fixed_scale(cfg.num_classes)))

    def update_scale(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """s from this global batch's B_avg and median target angle, at the current s."""
        with torch.no_grad():
            others = (~F.one_hot(labels, cos.shape[1]).bool()).float()
            b_sum = (torch.exp(self.s * cos) * others).sum()
            both = torch.stack([b_sum, torch.tensor(float(len(labels)), device=cos.device)])
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(both)
            theta_y = torch.acos(cos.gather(1, labels[:, None]).squeeze(1).clamp(-1 + 1e-7, 1 - 1e-7))
            theta_med = torch.median(global_batch(theta_y))
            b_avg = both[0] / both[1]
            self.s.copy_(torch.log(b_avg) / torch.cos(theta_med.clamp(max=math.pi / 4)))

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        if self.opts.dynamic:
            self.update_scale(cos, labels)
        return self.s * cos

    def caption(self, epoch_progress):
        return f"adacos: s = {self.s.item():.2f} ({'adaptive' if self.opts.dynamic else 'fixed'}), no margin"

    @staticmethod
    def settings(cfg):
        return "s adaptive" if cfg.dynamic else f"s {fixed_scale(cfg.num_classes):.2f} (fixed AdaCos)"
