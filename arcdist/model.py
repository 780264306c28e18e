"""The backbone: ConvLayer blocks built from a layer list, its FLOPs and shapes. The heads are in arcdist.heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arcdist.config import ConfigError, ModelConfig


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same state_dict) computed as relu(x) - a * relu(-x).

    The forward is bit-identical; the backward differs only at x == 0 exactly (slope 0 there, torch's
    uses a; with flush_denormal on, denormal inputs count as 0). torch 2.14's fused CPU
    PReLU backward took 19 % of a bf16 V1.2.2 step here; two ReLUs and a multiply cost a third of that.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.to(x.dtype)
        if a.numel() > 1:
            a = a.view(1, -1, *([1] * (x.dim() - 2)))
        return F.relu(x) - a * F.relu(-x)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that computes as a matrix product when its kernel covers the
    whole unpadded input (a 1x1 output: the light nets' 3x3 map -> 256x1x1 and the 1x1 layer after it).

    The same sum; oneDNN's convolution backward for that shape does not use a second core (bf16 here: 10.9 ms
    per batch of 256 with 2 threads, 7.4 ms with 1; as a matrix product 2.1 ms).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (tuple(x.shape[-2:]) == self.kernel_size and self.padding == (0, 0) and self.dilation == (1, 1)
                and self.groups == 1):
            y = F.linear(x.flatten(1), self.weight.flatten(1), self.bias)
            return y[:, :, None, None]
        return super().forward(x)


class ConvLayer(nn.Sequential):
    """The post's undefined block, read as Conv2d(bias=False) -> BatchNorm2d -> PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__(Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), PReLU())


def build_backbone(cfg: ModelConfig) -> nn.Sequential:
    """Image (N, C, H, W) -> feature (N, feature_dim), from the config's layer list and fc entry."""
    modules: list[nn.Module] = []
    for entry in cfg.layers:
        kind, *args = entry
        if kind == "conv":
            modules.append(ConvLayer(*args))
        elif kind == "pool":
            modules.append(nn.MaxPool2d(*args))
        else:
            raise ConfigError(f"unknown layer kind {kind!r} in {entry}; use 'conv' or 'pool'")
    kind, *args = cfg.fc
    if kind == "linear":
        modules += [nn.Flatten(), nn.Linear(args[0], cfg.feature_dim)]
    elif kind == "conv":
        cin, k, s, p = args
        modules += [nn.Conv2d(cin, cfg.feature_dim, k, s, p), nn.Flatten()]
    else:
        raise ConfigError(f"unknown fc kind {kind!r}; use 'linear' or 'conv'")
    return nn.Sequential(*modules)


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def describe(cfg: ModelConfig) -> dict:
    """Parameters, forward FLOPs per image (2 x multiply-adds of conv/linear) and shapes, from the layer list."""
    c, h = cfg.in_channels, cfg.image_size
    params = flops = 0
    for kind, *a in cfg.layers:
        if kind == "conv":
            cin, cout, k, s, p = a
            if cin != c:
                raise ConfigError(f"layer {('conv', *a)} expects {cin} input channels but gets {c}")
            h = _out(h, k, s, p)
            params += cout * cin * k * k + 2 * cout + 1  # conv weight, BN affine, PReLU
            flops += 2 * cout * cin * k * k * h * h
            c = cout
        else:
            k, s = a
            h = _out(h, k, s, 0)
    pre_head = (c, h, h)
    kind, *a = cfg.fc
    if kind == "linear":
        if a[0] != c * h * h:
            raise ConfigError(f"fc expects {a[0]} inputs but the backbone gives {c}x{h}x{h} = {c * h * h}")
        params += a[0] * cfg.feature_dim + cfg.feature_dim
        flops += 2 * a[0] * cfg.feature_dim
    else:
        cin, k, s, p = a
        ho = _out(h, k, s, p)
        if cin != c or ho != 1:
            raise ConfigError(f"conv fc on a {c}x{h}x{h} map must give a 1x1 map of {cfg.feature_dim} channels")
        params += cfg.feature_dim * cin * k * k + cfg.feature_dim
        flops += 2 * cfg.feature_dim * cin * k * k * ho * ho
    return dict(params=params, flops=flops, pre_head_shape=pre_head)
