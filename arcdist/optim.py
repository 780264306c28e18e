"""The two optimizers of the post (net and head) and their per-step learning-rate schedules."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from arcdist.config import OptimConfig


def build_optimizers(cfg: OptimConfig, backbone: nn.Module, head: nn.Module, fused: bool = False
                     ) -> tuple[torch.optim.Optimizer, ...]:
    """(net optimizer, head optimizer): Adam with library defaults, or SGD with the configured momentum.

    `fused` (train.fused_optim): torch's fused kernels, one per step instead of one per tensor and operation.
    """
    extra = dict(fused=True) if fused else {}

    def make(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)

    return (make(cfg.net, backbone.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay),
            make(cfg.head, head.parameters(), cfg.head_lr, cfg.head_momentum, 0.0))


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr after `step` optimizer steps.

    step:   gamma ** (epoch // step_size), i.e. StepLR stepped once per epoch as in the post;
    cosine: linear warm-up over warmup_epochs, then cosine decay to 0 at the last step.
    """
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    total = max(1, epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def build_schedulers(cfg: OptimConfig, opt_net: torch.optim.Optimizer, opt_head: torch.optim.Optimizer,
                     steps_per_epoch: int, epochs: int) -> tuple[torch.optim.lr_scheduler.LambdaLR, ...]:
    """Per-step LambdaLR schedulers for (net, head); the head's is constant unless schedule_head."""
    def net(step: int) -> float:
        return lr_factor(cfg, step, steps_per_epoch, epochs)

    def head(step: int) -> float:
        return net(step) if cfg.schedule_head else 1.0

    return (torch.optim.lr_scheduler.LambdaLR(opt_net, net), torch.optim.lr_scheduler.LambdaLR(opt_head, head))


def ema_with_warmup(decay: float) -> Callable:
    """`AveragedModel`'s update: an EMA whose decay is min(decay, (1 + n) / (10 + n)) after n updates.

    TensorFlow's `ExponentialMovingAverage(num_updates=...)` rule. A fixed 0.999 would keep half its weight on
    the first 700 steps (random weights): a 3-epoch MNIST run evaluated at chance. Integer buffers (BatchNorm's
    batch count) are copied. The decay stays a device tensor: no host read.
    """
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        keep = torch.clamp((1 + n) / (10 + n), max=decay)
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, (1 - keep).to(a.dtype))
            else:
                a.copy_(c)
    return update


class EMA(torch.optim.swa_utils.AveragedModel):
    """`AveragedModel` (same state_dict: module.*, n_averaged) whose per-step update reads nothing back from the
    device: torch's own tests `n_averaged` on the host every step (a sync per step on a GPU). The update count is
    mirrored in a Python int, read from the buffer once after a load."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True, multi_avg_fn=ema_with_warmup(decay))
        self._count: int | None = 0

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # read n_averaged again, once

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        import itertools

        if self._count is None:
            self._count = int(self.n_averaged)
        mine = [p.detach() for p in itertools.chain(self.module.parameters(), self.module.buffers())]
        theirs = [p.detach().to(m.device) for m, p in zip(mine, itertools.chain(model.parameters(), model.buffers()),
                                                          strict=True)]
        if self._count == 0:
            for m, t in zip(mine, theirs):
                m.copy_(t)
        else:
            self.multi_avg_fn(mine, theirs, self.n_averaged)
        self.n_averaged += 1
        self._count += 1
