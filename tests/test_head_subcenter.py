"""Sub-center ArcFace (arcdist/heads/subcenter.py): equal to pytorch-metric-learning's SubCenterArcFaceLoss."""
import math

import pytest
import torch
import torch.nn.functional as F

from arcdist.config import Config, apply_overrides, from_dict, to_dict, validate
from arcdist.heads import HeadConfig, build_head, param_count

pml = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning (a dev dependency)")


def inputs(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(96, 2, generator=g) * 3, torch.randn(10 * k, 2, generator=g), torch.randint(0, 10, (96,), generator=g)


@pytest.mark.parametrize("k,margin,scale", [(3, 0.5, 30.0), (2, 0.2, 16.0), (1, 0.3, 64.0)])
def test_loss_equals_pytorch_metric_learning(k, margin, scale):
    cfg = HeadConfig(kind="subcenter", sub_centers=k, margin=margin, scale=scale, margin_warmup_epochs=0.0)
    x, w, y = inputs(k)
    head = build_head(cfg)
    assert head.weight.shape == (10 * k, 2) and param_count(cfg) == 20 * k
    with torch.no_grad():
        head.weight.copy_(w)
    theirs = pml.SubCenterArcFaceLoss(num_classes=10, embedding_size=2, margin=math.degrees(margin), scale=scale,
                                      sub_centers=k)
    theirs.W.data = w.t().clone().double()
    # pml has no fallback past pi - m: keep the samples inside it, where the two are the same formula
    nearest = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    inside = (torch.acos(nearest.view(-1, 10, k).amax(2).gather(1, y[:, None]).clamp(-1, 1)) + margin < math.pi)[:, 0]
    x, y = x[inside], y[inside]
    assert len(y) >= 80
    torch.testing.assert_close(F.cross_entropy(head(x, y, 0.0).double(), y), theirs(x.double(), y), atol=1e-4, rtol=1e-5)
    # the prediction rule: the class of the nearest sub-centre
    want = (F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).t()).argmax(1) // k
    assert torch.equal(head.predict(x).argmax(1), want)


def test_one_sub_centre_is_arcface_exactly():
    x, w, y = inputs(1, seed=2)
    sub, arc = build_head(HeadConfig(kind="subcenter", sub_centers=1)), build_head(HeadConfig(kind="arcface"))
    for h in (sub, arc):
        with torch.no_grad():
            h.weight.copy_(w)
    assert torch.equal(sub(x, y, 0.5), arc(x, y, 0.5))


def test_config_cli_and_even_init():
    cfg = apply_overrides(Config(), ["head.kind=subcenter", "head.sub_centers=4", "head.init=even"])
    validate(cfg)
    assert (cfg.head.sub_centers, cfg.head.margin) == (4, 0.2) and from_dict(to_dict(cfg)) == cfg
    head = build_head(cfg.head)
    angles = torch.rad2deg(torch.atan2(head.weight[:, 1], head.weight[:, 0])).detach() % 360
    # class c's four sub-centres around 36 c degrees, within +-1/8 of a slot (4.5 deg), none equal
    for c in range(10):
        a = angles[4 * c:4 * c + 4]
        assert ((a - 36 * c + 180) % 360 - 180).abs().max() <= 4.5 + 1e-4 and len(set(a.tolist())) == 4
    assert head.geometry()["W"].shape == (10, 2) and head.geometry()["sub_centers"].shape == (40, 2)
    with pytest.raises(Exception, match="head.sub_centers must be >= 1"):
        validate(apply_overrides(Config(), ["head.kind=subcenter", "head.sub_centers=0"]))
