"""A layer list written for 28 px at other sizes: where its map is pooled (model.pool), with values equal to
torch's adaptive average pooling and no op that a deterministic CUDA run refuses, and the size it computes at
(model.net_size)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from arcdist.config import ConfigError, from_dict, to_dict
from arcdist.model import build_backbone, collapse_fit, describe, fit_map, smallest_image, written_size
from arcdist.shape import auto_net_size
from arcdist.variants import VARIANTS


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("h, w, size", [(6, 6, 3), (8, 8, 3), (7, 5, 3), (13, 9, 5), (12, 12, 1), (4, 4, 3)])
def test_fit_map_equals_adaptive_avg_pool_without_calling_it(h, w, size):
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    with _Ops() as ops:
        got = fit_map(x, size)
        grad, = torch.autograd.grad(got, x, torch.ones_like(got) + torch.arange(size * size).view(size, size))
    want = F.adaptive_avg_pool2d(x, size)
    ref, = torch.autograd.grad(want, x, torch.ones_like(want) + torch.arange(size * size).view(size, size))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-14)
    # adaptive_avg_pool2d's CUDA backward has no deterministic kernel: train.deterministic would refuse it
    assert not {n for n in ops.names if "adaptive" in n}


def _collapse_shapes(net: torch.nn.Module, x: torch.Tensor) -> tuple[tuple, tuple]:
    """The map sizes into and out of the collapsing layer's convolution (index 6 of A8's list)."""
    seen = []
    handle = net[6][0].register_forward_hook(lambda m, a, out: seen.append((a[0].shape[-2:], out.shape[-2:])))
    net(x)
    handle.remove()
    return tuple(seen[0][0]), tuple(seen[0][1])


@pytest.mark.parametrize("size", [28, 48, 96])
def test_the_cpu_recipe_keeps_the_image_layout_at_any_size(size):
    model = replace(VARIANTS["A8"].config.model, in_channels=3, image_size=size)
    assert collapse_fit(model) == (6, 3)  # the 3x3 conv that takes the 28-px list's 3x3 map to 1x1
    layout, end = build_backbone(model).eval(), build_backbone(replace(model, pool="end")).eval()
    end.load_state_dict(layout.state_dict())  # the same keys: a checkpoint loads into either
    x = torch.randn(2, 3, size, size)
    side = size // 8  # after three 2x2 pools
    assert _collapse_shapes(layout, x) == ((side, side), (1, 1))  # pooled to 3x3 inside the layer, then 1x1
    assert _collapse_shapes(end, x) == ((side, side), (side - 2, side - 2))  # "end": a map of local windows
    same = torch.allclose(layout(x), end(x), atol=1e-6)
    assert same == (size == 28)  # at the written size the two are one net: MNIST runs are unchanged
    with FlopCounterMode(display=False) as counter:
        layout(x[:1])
    assert describe(model)["flops"] == counter.get_total_flops()


def test_lists_without_a_collapsing_layer_and_resnet_pool_at_the_fc():
    for name in ("V0", "C1", "T0", "R18"):
        assert collapse_fit(VARIANTS[name].config.model) == (-1, 0), name
    v0 = replace(VARIANTS["V0"].config.model, image_size=48)
    assert build_backbone(v0)(torch.randn(2, 1, 48, 48)).shape == (2, 2)


def test_a_config_from_before_model_pool_keeps_the_pooling_it_was_trained_with():
    cfg = VARIANTS["A8"].config
    assert cfg.model.pool == "layout"
    assert from_dict(to_dict(cfg)) == cfg
    old = to_dict(cfg)
    del old["model"]["pool"]
    assert from_dict(old).model.pool == "end"


def test_the_size_a_layer_list_was_written_for():
    a8 = VARIANTS["A8"].config.model
    assert (smallest_image(a8), written_size(a8)) == (24, 31)  # 24..31 px end on A8's 3x3 map, 32 on 4x4
    assert written_size(VARIANTS["T0"].config.model) == 30
    assert written_size(VARIANTS["C1"].config.model) == 47  # CIFAR's list, written for 32 px


@pytest.mark.parametrize("size, net", [(28, 0), (31, 0), (32, 28), (48, 28), (96, 28), (1000, 28)])
def test_a_folder_of_larger_images_runs_the_list_at_its_written_size(size, net):
    model = replace(VARIANTS["A8"].config.model, in_channels=3, image_size=size)
    assert auto_net_size(model, 28) == net  # 24..31 px run unpooled; larger images at MNIST's 28
    assert auto_net_size(model, 20) == (24 if net else 0)  # never below the list's smallest,
    assert auto_net_size(model, 40) == (31 if net else 0)  # nor above what it takes unpooled
    assert auto_net_size(replace(VARIANTS["R18"].config.model, image_size=size), 96) == 0  # any size: global pool


@pytest.mark.parametrize("size, net_size", [(48, 28), (96, 28), (96, 24)])
def test_net_size_is_the_same_net_on_the_image_pooled_first(size, net_size):
    model = replace(VARIANTS["A8"].config.model, in_channels=3, image_size=size, net_size=net_size)
    net = build_backbone(model).eval()
    small = build_backbone(replace(model, image_size=net_size, net_size=0)).eval()
    small.load_state_dict(net.state_dict())  # the same keys: no module added
    x = torch.randn(3, 3, size, size)
    torch.testing.assert_close(net(x), small(F.adaptive_avg_pool2d(x, net_size)), rtol=1e-5, atol=1e-5)
    assert describe(model) == describe(replace(model, image_size=net_size, net_size=0))
    if size % net_size == 0:  # avg_pool2d: no FLOPs counted (the matrix form's two products are, and not described)
        with FlopCounterMode(display=False) as counter:
            net(x[:1])
        assert describe(model)["flops"] == counter.get_total_flops()


@pytest.mark.parametrize("model, fix", [
    (dict(image_size=96, net_size=20), "net_size=31"),  # below the list's smallest (24)
    (dict(image_size=48, net_size=64), "net_size=31"),  # above the image
    (dict(image_size=28, net_size=29), "net_size=28"),
])
def test_a_net_size_the_list_cannot_take_is_one_line_naming_the_range(model, fix):
    cfg = replace(VARIANTS["A8"].config.model, **model)
    with pytest.raises(ConfigError, match=r"from 24 \(this layer list's smallest\) to") as e:
        describe(cfg)
    assert fix in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no.* there|has none there"):
        describe(replace(VARIANTS["R18"].config.model, net_size=32))


def test_a_config_from_before_model_net_size_runs_at_the_image_size():
    old = to_dict(VARIANTS["A8"].config)
    del old["model"]["net_size"]
    assert from_dict(old).model.net_size == 0


@pytest.mark.parametrize("stem, size", [("imagenet", 32), ("imagenet", 96), ("small", 8), ("small", 28), ("small", 32)])
def test_resnet18s_small_stem_keeps_the_resolution_torchvisions_halves_five_times(stem, size):
    """model.stem=small (CIFAR's ResNet: a 3x3 convolution of stride 1, no max pool) halves an image three times on
    its way to layer4, torchvision's stem (7x7 stride 2, 3x3 max pool) five: at 32 px 4x4 against 1x1."""
    cfg = replace(VARIANTS["R18"].config.model, image_size=size, stem=stem, in_channels=1)
    net = build_backbone(cfg).eval()
    maps = []
    net.layer4.register_forward_hook(lambda m, i, o: maps.append(tuple(o.shape[2:])))
    assert net(torch.rand(2, 1, size, size)).shape == (2, 2)
    side = -(-size // 8) if stem == "small" else -(-size // 32)  # (ceil: the convolutions' padding)
    assert maps == [(side, side)]
    if stem == "small":
        assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.in_channels) == ((3, 3), (1, 1), 1)
        assert isinstance(net.maxpool, torch.nn.Identity)
    else:
        assert (net.conv1.kernel_size, net.conv1.stride) == ((7, 7), (2, 2))
    assert smallest_image(cfg) == (8 if stem == "small" else 32)
    assert describe(cfg)["params"] == sum(p.numel() for p in net.parameters())


def test_a_config_from_before_model_stem_is_torchvisions_and_weights_refuse_the_small_stem():
    from arcdist.config import validate

    cfg = VARIANTS["R18"].config
    old = to_dict(cfg)
    del old["model"]["stem"]
    assert from_dict(old).model.stem == "imagenet" == cfg.model.stem
    with pytest.raises(ConfigError, match=r"^model.weights=imagenet: torchvision's weights have a 7x7 first "
                                          r"convolution, model.stem=small a 3x3 one; drop one of the two --set$"):
        validate(replace(cfg, model=replace(cfg.model, weights="imagenet", stem="small")))
