"""The backbone: ConvLayer blocks built from a layer list, its FLOPs and shapes. The heads are in arcdist.heads.

A layer list is written for one image size and colour (the post's: 28 px grey), but it takes any: the first
ConvLayer takes `model.in_channels` channels, and a larger image's map is average-pooled to the size the list was
written for (an image of the written size passes unpooled, so MNIST runs are what they were). Where it is pooled
is `model.pool`: "layout" (default) just before the layer that takes the written map to 1x1 (A6-A10's 3x3 conv on
a 3x3 map), so that layer still sees the image's layout, a third of the image per cell, at any size; "end" at the
fc, after that layer (a mean of 3x3 windows over the larger map: a bag of local parts). An image whose map comes
out smaller than the list needs is refused.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from arcdist.config import ConfigError, ModelConfig


class _ScalarPReLU(torch.autograd.Function):
    """PReLU with one slope by leaky_relu's fused CPU kernels: the slope is read as a number (free on a CPU), and
    the slope's gradient is sum(grad * min(x, 0))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.slope, ctx.weight_dtype = float(weight.to(x.dtype)), weight.dtype
        ctx.save_for_backward(x)
        return F.leaky_relu(x, ctx.slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)
        grad_weight = (grad * x.clamp(max=0)).sum().reshape(1).to(ctx.weight_dtype)
        return grad_x, grad_weight


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same state_dict, same values and input gradients) that trains faster on a CPU.

    torch 2.14's fused CPU PReLU backward took 19 % of a bf16 V1.2.2 step here, and relu(x) - a * relu(-x) costs
    eight passes over the activations; with one slope, training on a CPU goes through leaky_relu's fused forward
    and backward (results/performance-notes.md). Elsewhere (evaluation, export, compile, CUDA) it is F.prelu.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.weight.numel() == 1 and x.device.type == "cpu" and torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            return _ScalarPReLU.apply(x, self.weight)
        return F.prelu(x, self.weight.to(x.dtype))


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that computes as a matrix product when its kernel covers the
    whole unpadded input (a 1x1 output: the light nets' 3x3 map -> 256x1x1 and the 1x1 layer after it), and that
    first pools its input to `fit` x `fit` when `fit` is set (`model.pool=layout`).

    The same sum; oneDNN's convolution backward for that shape does not use a second core (bf16 here: 10.9 ms
    per batch of 256 with 2 threads, 7.4 ms with 1; as a matrix product 2.1 ms).
    """

    def __init__(self, *args, fit: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.fit = fit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fit:
            x = fit_map(x, self.fit)
        if (tuple(x.shape[-2:]) == self.kernel_size and self.padding == (0, 0) and self.dilation == (1, 1)
                and self.groups == 1):
            o, i, h, w = self.weight.shape
            if self.weight.stride() == (h * w * i, 1, w * i, i) != (i * h * w, h * w, w, 1):
                # an NHWC weight (train.channels_last): both flattened in (H, W, C) order, a view of it, so its
                # gradient has its strides (DDP warns of, and copies, a gradient that has not)
                y = F.linear(x.permute(0, 2, 3, 1).flatten(1), self.weight.permute(0, 2, 3, 1).flatten(1), self.bias)
            else:
                y = F.linear(x.flatten(1), self.weight.flatten(1), self.bias)
            return y[:, :, None, None]
        return super().forward(x)


def _bins(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, n): row i averages adaptive_avg_pool's bin i of n positions (floor(i n / size) .. ceil((i+1) n / size))."""
    i = torch.arange(size, device=like.device)[:, None]
    j = torch.arange(n, device=like.device)[None, :]
    inside = (j >= (i * n) // size) & (j < -((-(i + 1) * n) // size))
    weights = inside.to(like.dtype)
    return weights / weights.sum(1, keepdim=True)


def fit_map(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` average-pooled to `size` x `size` as adaptive_avg_pool2d does, when its map is of another size
    (unchanged, not copied, when not). Never by adaptive_avg_pool2d itself: its CUDA backward has no deterministic
    kernel (train.deterministic); a mean (1x1), avg_pool2d (a whole multiple) or two small matrix products."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if size == 1:
        return x.mean((2, 3), keepdim=True)
    if h % size == 0 and w % size == 0:
        return F.avg_pool2d(x, (h // size, w // size))
    return torch.einsum("ih,nchw,jw->ncij", _bins(h, size, x), x, _bins(w, size, x))


class GlobalMean(nn.Module):
    """ResNet's AdaptiveAvgPool2d((1, 1)) as a mean over the map (no parameters; a deterministic CUDA backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class PoolFlatten(nn.Flatten):
    """nn.Flatten (no parameters: checkpoints keep their keys) after `fit_map` to the fc's map size."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(fit_map(x, self.size))


class PooledConv2d(nn.Conv2d):
    """The 'conv' fc (nn.Conv2d, same parameters) after `fit_map` to the map size it was written for."""

    def __init__(self, *args, size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(fit_map(x, self.size))


class ConvLayer(nn.Sequential):
    """The post's undefined block, read as Conv2d(bias=False) -> BatchNorm2d -> PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, fit: int = 0):
        super().__init__(Conv2d(cin, cout, kernel, stride, padding, bias=False, fit=fit), nn.BatchNorm2d(cout),
                         PReLU())


def layers_for(cfg: ModelConfig) -> tuple:
    """The layer list with its first ConvLayer taking `cfg.in_channels` channels."""
    layers = list(cfg.layers)
    first = next((i for i, entry in enumerate(layers) if entry[0] == "conv"), None)
    if first is not None:
        layers[first] = ("conv", cfg.in_channels, *layers[first][2:])
    return tuple(layers)


def collapse_fit(cfg: ModelConfig) -> tuple[int, int]:
    """(index in the layer list, map size) of the layer that takes the written map to 1x1 and the size it was
    written for, walking back from the fc's map size; (-1, 0) when no layer does (the map is pooled at the fc)."""
    if cfg.pool != "layout" or cfg.arch != "layers":
        return -1, 0
    channels = next((e[2] for e in reversed(cfg.layers) if e[0] == "conv"), cfg.in_channels)
    size = fc_map_size(cfg, channels)
    for i in range(len(cfg.layers) - 1, -1, -1):
        kind, *a = cfg.layers[i]
        k, s, p = a[2:5] if kind == "conv" else (a[0], a[1], 0)
        before = (size - 1) * s + k - 2 * p
        if kind == "conv" and size == 1 and before > 1:
            return i, before
        size = before
    return -1, 0


def fc_map_size(cfg: ModelConfig, channels: int) -> int:
    """The map size (square) the fc entry was written for, from its input size and the last ConvLayer's channels."""
    kind, *a = cfg.fc
    if kind == "linear":
        side = math.isqrt(max(a[0] // max(channels, 1), 1))
        if side * side * channels != a[0]:
            raise ConfigError(f"fc expects {a[0]} inputs, not a whole {channels}xSxS map; set model.fc to "
                              f"(\"linear\", {channels} * S * S)")
        return side
    if kind == "conv":
        _, k, s, p = a
        return k - 2 * p  # the size a stride-s conv takes to a 1x1 map
    raise ConfigError(f"unknown fc kind {kind!r}; use 'linear' or 'conv'")


def build_resnet18(cfg: ModelConfig) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised, with a feature_dim fc and a first convolution for
    `cfg.in_channels` (or the small-image stem, model.stem=small); its global average pool takes any image size.
    `start_weights` loads `cfg.weights`."""
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=cfg.feature_dim)
    if cfg.stem == "small":  # CIFAR's ResNet: full resolution into layer1
        net.conv1 = nn.Conv2d(cfg.in_channels, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        net.maxpool = nn.Identity()
    elif cfg.in_channels != 3:
        net.conv1 = nn.Conv2d(cfg.in_channels, 64, 7, 2, 3, bias=False)
    net.avgpool = GlobalMean()
    return net


IMAGENET = "imagenet"  # model.weights: torchvision's ResNet18_Weights.IMAGENET1K_V1, by torch.hub's cache


def start_weights(backbone: nn.Module, cfg: ModelConfig) -> None:
    """Load `cfg.weights` into a fresh `build_backbone(cfg)` (a new run only: a resume, embed and export read the
    checkpoint): a torchvision ResNet-18 state dict file, or "imagenet". Its fc is left out (the feature layer
    stays random); for a grey run the first convolution's three colour filters are summed (timm's way), so a
    grey image x gives what the RGB image (x, x, x) gave. A ConfigError for a file that is not one."""
    if not cfg.weights:
        return
    state = imagenet_state() if cfg.weights == IMAGENET else load_state(cfg.weights)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state and state["conv1.weight"].shape[1] != cfg.in_channels:
        if cfg.in_channels != 1:
            raise ConfigError(f"model.weights={cfg.weights}: its first convolution takes "
                              f"{state['conv1.weight'].shape[1]} channels, the run {cfg.in_channels}")
        state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True)
    missing = backbone.load_state_dict(state, strict=False)
    if set(missing.missing_keys) - {"fc.weight", "fc.bias"}:
        raise ConfigError(f"model.weights={cfg.weights} is not a ResNet-18 state dict (missing "
                          f"{sorted(missing.missing_keys)[0]}, ...)")


def load_state(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file fails in many ways (a KeyError for junk bytes)
        why = (str(e).splitlines() or [""])[0]
        raise ConfigError(f"model.weights={path}: cannot load it ({type(e).__name__}: {why}); pass a "
                          "torchvision ResNet-18 state dict file (torch.save(model.state_dict(), PATH))") from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights={path} holds a {type(state).__name__}, not a state dict; pass a torchvision "
                          "ResNet-18 state dict file (torch.save(model.state_dict(), PATH))")
    return state


def imagenet_state() -> dict:
    """torchvision's ImageNet ResNet-18 weights from torch.hub's cache, downloaded once per node where missing."""
    from torchvision.models import ResNet18_Weights

    from arcdist.nodecache import node_lock

    weights = ResNet18_Weights.IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    with node_lock(hub / ".arcdist-download.lock"):
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # urllib's URLError, an HTTP error, a hash mismatch, a full disk: all the same fix
            name = weights.url.rsplit("/", 1)[-1]
            raise ConfigError(f"model.weights=imagenet: cannot fetch {weights.url} ({str(e).splitlines()[0]}); "
                              f"offline, copy {name} into {hub}/ or pass model.weights=PATH") from None


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Image (N, C, H, W) -> feature (N, feature_dim), from the config's layer list and fc entry (or ResNet-18)."""
    if cfg.arch == "resnet18":
        return build_resnet18(cfg)
    modules: list[nn.Module] = []
    channels = cfg.in_channels
    fit_at, fit = collapse_fit(cfg)
    for i, entry in enumerate(layers_for(cfg)):
        kind, *args = entry
        if kind == "conv":
            modules.append(ConvLayer(*args, fit=fit if i == fit_at else cfg.net_size if i == 0 else 0))
            channels = args[1]
        elif kind == "pool":
            modules.append(nn.MaxPool2d(*args))
        else:
            raise ConfigError(f"unknown layer kind {kind!r} in {entry}; use 'conv' or 'pool'")
    size = fc_map_size(cfg, channels)
    kind, *args = cfg.fc
    if kind == "linear":
        modules += [PoolFlatten(size), nn.Linear(args[0], cfg.feature_dim)]
    else:
        cin, k, s, p = args
        modules += [PooledConv2d(cin, cfg.feature_dim, k, s, p, size=size), nn.Flatten()]
    return nn.Sequential(*modules)


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _map_size(layers: tuple, size: int) -> int:
    for kind, *a in layers:
        size = _out(size, *a[2:5]) if kind == "conv" else _out(size, a[0], a[1], 0)
    return size


@functools.lru_cache(maxsize=8)
def _describe_resnet(channels: int, size: int, dim: int, stem: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    net = build_resnet18(ModelConfig(arch="resnet18", in_channels=channels, image_size=size, feature_dim=dim,
                                     stem=stem)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, channels, size, size))
    return dict(params=sum(p.numel() for p in net.parameters()), flops=counter.get_total_flops(),
                pre_head_shape=(512, 1, 1))


def smallest_image(cfg: ModelConfig) -> int:
    """The smallest image size (pixels) whose map reaches the fc's size."""
    if cfg.arch == "resnet18":
        return 32 if cfg.stem == "imagenet" else 8  # five halvings to a 1x1 map, or three
    channels = next((e[2] for e in reversed(cfg.layers) if e[0] == "conv"), cfg.in_channels)
    need = fc_map_size(cfg, channels)
    return next((s for s in range(1, 4097) if _map_size(cfg.layers, s) >= need), 4096)


def written_size(cfg: ModelConfig) -> int:
    """The largest image size (pixels) the layer list takes to the fc's map without pooling: the top of the range
    it was written for (A6-A10's list: 24-31 px, the post's 28 inside)."""
    channels = next((e[2] for e in reversed(cfg.layers) if e[0] == "conv"), cfg.in_channels)
    need, size = fc_map_size(cfg, channels), smallest_image(cfg)
    while size < 4096 and _map_size(cfg.layers, size + 1) == need:
        size += 1
    return size


def takes_net_size(cfg: ModelConfig) -> bool:
    """Whether model.net_size can apply: a layer list whose first entry is a ConvLayer (its Conv2d pools)."""
    return cfg.arch == "layers" and bool(cfg.layers) and cfg.layers[0][0] == "conv"


def _check_net_size(cfg: ModelConfig) -> None:
    if not cfg.net_size:
        return
    if not takes_net_size(cfg):
        raise ConfigError(f"model.net_size={cfg.net_size} pools the image before a layer list's first ConvLayer; "
                          "this model has none there: drop the --set (or --set model.net_size=0)")
    if not smallest_image(cfg) <= cfg.net_size <= cfg.image_size:
        raise ConfigError(f"model.net_size={cfg.net_size} must be from {smallest_image(cfg)} (this layer list's "
                          f"smallest) to {cfg.image_size} (the image size), or 0 for the image size; try --set "
                          f"model.net_size={min(written_size(cfg), cfg.image_size)}")


def describe(cfg: ModelConfig) -> dict:
    """Parameters, forward FLOPs per image (2 x multiply-adds of conv/linear) and shapes, from the layer list."""
    _check_net_size(cfg)
    if cfg.arch == "resnet18":
        return _describe_resnet(cfg.in_channels, cfg.image_size, cfg.feature_dim, cfg.stem)
    c, h = cfg.in_channels, cfg.image_size
    params = flops = 0
    fit_at, fit = collapse_fit(cfg)
    for i, (kind, *a) in enumerate(layers_for(cfg)):
        if kind == "conv":
            cin, cout, k, s, p = a
            if cin != c:
                raise ConfigError(f"layer {('conv', *a)} expects {cin} input channels but gets {c}")
            if i == 0 and cfg.net_size:
                h = cfg.net_size  # pooled to the size the list computes at (model.net_size)
            if i == fit_at and h >= fit:
                h = fit  # pooled to the written size (model.pool=layout)
            h = _out(h, k, s, p)
            params += cout * cin * k * k + 2 * cout + 1  # conv weight, BN affine, PReLU
            flops += 2 * cout * cin * k * k * h * h
            c = cout
        else:
            k, s = a
            h = _out(h, k, s, 0)
    if h < 1:
        raise ConfigError(f"{cfg.image_size} px images are too small for this layer list; use at least "
                          f"{smallest_image(cfg)} px (--set model.image_size={smallest_image(cfg)})")
    need = fc_map_size(cfg, c)
    if h < need:
        raise ConfigError(f"{cfg.image_size} px images give a {c}x{h}x{h} map where the fc takes {c}x{need}x{need}; "
                          f"use images of at least {smallest_image(cfg)} px (--set model.image_size="
                          f"{smallest_image(cfg)})")
    h = need  # pooled to the fc's size (PoolFlatten)
    pre_head = (c, h, h)
    kind, *a = cfg.fc
    if kind == "linear":
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
