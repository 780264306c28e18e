"""ArcMargin head: equal to a float64 reference, finite everywhere, fp32 under autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from arcdist.config import HeadConfig
from arcdist.heads import ArcMarginHead, arc_margin_logits, margin_at


def reference_logits(x, w, y, s, m):
    """Direct float64 formula: s*cos(theta_y + m) (or cos theta_y - m sin m past pi), s*cos theta_j."""
    x, w = x.double(), w.double()
    cos = (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    out = cos.clone()
    for i, c in enumerate(y.tolist()):
        theta = math.acos(max(-1.0, min(1.0, cos[i, c].item())))
        out[i, c] = math.cos(theta + m) if theta + m <= math.pi else cos[i, c] - m * math.sin(m)
    return s * out


@pytest.mark.parametrize("s,m", [(16.0, 0.2), (30.0, 0.5), (10.0, 0.0)])
def test_logits_and_loss_equal_float64_reference(s, m):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    w = torch.randn(10, 2, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    got = arc_margin_logits(x, w, y, s, m)
    want = reference_logits(x, w, y, s, m)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-4 * s, rtol=0)
    torch.testing.assert_close(F.cross_entropy(got, y).double(), F.cross_entropy(want, y), atol=1e-4, rtol=0)


def test_branch_past_pi_is_monotonic_fallback():
    m = 0.5
    w = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 9)
    # theta_y = 170 deg: theta + m > pi, so the target logit is cos(theta) - m sin(m)
    theta = math.radians(170)
    x = torch.tensor([[math.cos(theta), math.sin(theta)]])
    got = arc_margin_logits(x, w, torch.tensor([0]), 1.0, m)[0, 0].item()
    assert got == pytest.approx(math.cos(theta) - m * math.sin(m), abs=1e-6)
    assert (theta + m) > math.pi
    # just inside the boundary the true cos(theta + m) is used
    theta = math.pi - m - 0.05
    x = torch.tensor([[math.cos(theta), math.sin(theta)]])
    got = arc_margin_logits(x, w, torch.tensor([0]), 1.0, m)[0, 0].item()
    assert got == pytest.approx(math.cos(theta + m), abs=1e-5)


@pytest.mark.parametrize("feature", [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
def test_gradients_finite_at_cos_plus_minus_one_and_zero_feature(feature):
    head = ArcMarginHead(HeadConfig(scale=16, margin=0.3))
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 9))
    x = torch.tensor([feature], requires_grad=True)
    logits = head(x, torch.tensor([0]), 1.0)  # 1 epoch: the whole margin
    loss = F.cross_entropy(logits, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_head_runs_fp32_under_bf16_autocast():
    head = ArcMarginHead(HeadConfig())
    x = torch.randn(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16(), torch.arange(8), 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, arc_margin_logits(x.bfloat16().float(), head.weight, torch.arange(8), 16.0, 0.2))


def test_margin_warmup_is_linear_then_constant():
    cfg = HeadConfig(margin=0.4, margin_warmup_epochs=2.0)
    assert [margin_at(cfg, e) for e in (0, 0.5, 1, 2, 5)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.4])
    assert margin_at(HeadConfig(margin=0.4, margin_warmup_epochs=0), 0) == 0.4


def test_even_init_spaces_class_directions_36_degrees_apart():
    from arcdist.metrics import separation_metrics

    head = ArcMarginHead(HeadConfig(init="even"))
    w = head.weight.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(10))
    m = separation_metrics(w, torch.arange(10), w)
    assert m["min_weight_angle_deg"] == pytest.approx(36.0, abs=1e-4) and m["accuracy"] == 1.0


@pytest.mark.parametrize("channels", [1, 5])
def test_prelu_matches_torch_prelu_values_gradients_and_state_dict(channels):
    from arcdist.model import PReLU

    torch.manual_seed(0)
    ours, ref = PReLU(channels), torch.nn.PReLU(channels)
    ref.weight.data = torch.linspace(-0.3, 0.7, channels)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == ["weight"]
    x = torch.randn(4, 5, 6, 6)
    x[0, 0, 0, :3] = torch.tensor([1e-30, -1e-30, 3.0])  # tiny (not denormal: tests may flush those to 0)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    zero = torch.zeros(1, channels, 1, 1, requires_grad=True)
    ours(zero).sum().backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))  # the one documented difference: slope 0 at x == 0


def test_even_init_places_classes_in_the_given_order():
    order = (0, 6, 2, 4, 3, 1, 5, 7, 9, 8)
    w = ArcMarginHead(HeadConfig(init="even", order=order)).weight.detach()
    angles = torch.rad2deg(torch.atan2(w[:, 1], w[:, 0])) % 360
    for position, c in enumerate(order):
        assert angles[c].item() == pytest.approx(36.0 * position, abs=1e-4), (position, c)
    natural = ArcMarginHead(HeadConfig(init="even")).weight.detach()
    torch.testing.assert_close(torch.rad2deg(torch.atan2(natural[:, 1], natural[:, 0])) % 360,
                               torch.arange(10.0) * 36, atol=1e-4, rtol=0)
    assert torch.allclose(w.norm(dim=1), torch.ones(10))


def test_frozen_head_gets_no_gradient_and_its_optimizer_leaves_it_alone():
    from arcdist.config import OptimConfig
    from arcdist.optim import build_optimizers

    head = ArcMarginHead(HeadConfig(init="even", freeze=True))
    before = head.weight.detach().clone()
    net = torch.nn.Linear(4, 2)
    opt_net, opt_head = build_optimizers(OptimConfig(net="adam", head="adam", head_lr=0.5), net, head)
    x, y = torch.randn(16, 4), torch.randint(0, 10, (16,))
    for _ in range(3):
        F.cross_entropy(head(net(x), y, 1.0), y).backward()
        opt_net.step()
        opt_head.step()
    assert head.weight.grad is None and not head.weight.requires_grad
    assert torch.equal(head.weight.detach(), before)
    assert net.weight.grad is not None
