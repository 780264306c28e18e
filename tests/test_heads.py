"""ArcMargin head: equal to a float64 reference, finite everywhere, fp32 under autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from arcdist.config import HeadConfig
from arcdist.heads import build_head
from arcdist.heads.arcface import ArcMarginHead, arc_margin_logits


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
    assert [build_head(cfg).margin_now(e) for e in (0, 0.5, 1, 2, 5)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.4])
    assert build_head(HeadConfig(margin=0.4, margin_warmup_epochs=0)).margin_now(0) == 0.4


def test_even_init_spaces_class_directions_36_degrees_apart():
    from arcdist.evaluation.metrics import separation_metrics

    head = ArcMarginHead(HeadConfig(init="even"))
    w = head.weight.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(10))
    m = separation_metrics(w, torch.arange(10), w)
    assert m["min_weight_angle_deg"] == pytest.approx(36.0, abs=1e-4) and m["accuracy"] == 1.0


@pytest.mark.parametrize("channels,training", [(1, True), (1, False), (5, True)])
def test_prelu_matches_torch_prelu_values_gradients_and_state_dict(channels, training):
    """One slope in training on a CPU takes the leaky_relu path, the rest F.prelu: both equal nn.PReLU."""
    from arcdist.model import PReLU

    torch.manual_seed(0)
    ours, ref = PReLU(channels), torch.nn.PReLU(channels)
    ref.weight.data = torch.linspace(-0.3, 0.7, channels) if channels > 1 else torch.tensor([0.2371])
    ours.load_state_dict(ref.state_dict())
    ours.train(training)
    assert list(ours.state_dict()) == ["weight"]
    x = torch.randn(4, 5, 6, 6)
    x[0, 0, 0, :4] = torch.tensor([1e-30, -1e-30, 3.0, 0.0])  # tiny (not denormal: tests may flush those) and 0
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(xa.grad, xb.grad)  # at x == 0 too: slope a there, as torch's
    assert ours.weight.grad.dtype == ref.weight.grad.dtype
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)


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


# -- the margin-loss family (head.kind) ------------------------------------------------------------------
import dataclasses  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from arcdist.heads import HEADS, head_of_kind  # noqa: E402
from arcdist.heads.sphereface import sphere_lambda  # noqa: E402

KINDS = tuple(HEADS)


def test_each_kind_declares_itself_once():
    """Each file of arcdist/heads registers one kind, which owns its config: switching kind applies its defaults."""
    import pkgutil

    import arcdist.heads

    files = {m.name for m in pkgutil.iter_modules(arcdist.heads.__path__)} - {"base"}
    assert set(HEADS) == files
    for kind, cls in HEADS.items():
        assert cls.kind == kind and cls.__module__ == f"arcdist.heads.{kind}", kind
        cfg = head_of_kind(HeadConfig(), kind)
        assert cfg.params == cls.Config() and cfg.to_dict()["kind"] == kind
    scaled = {k for k, h in HEADS.items() if "scale_by" in {f.name for f in dataclasses.fields(h.Config)}}
    assert scaled == {"normface", "cosface", "arcface", "combined", "subcenter"}


def spread_inputs(n_random=64, seed=0):
    """Features at every angle to their target direction (0..180 deg: every branch of psi and the fallbacks),
    random ones, and W with rows of unequal norms."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, 2, generator=g) * torch.linspace(0.5, 2.0, 10)[:, None]
    y_sweep = torch.arange(37) % 10
    base = torch.atan2(w[y_sweep, 1], w[y_sweep, 0])
    theta = torch.linspace(0, math.pi, 37) * torch.where(torch.arange(37) % 2 == 0, 1.0, -1.0)
    r = torch.linspace(0.3, 5.0, 37)
    sweep = torch.stack([r * torch.cos(base + theta), r * torch.sin(base + theta)], 1)
    x = torch.cat([sweep, torch.randn(n_random, 2, generator=g) * 3])
    y = torch.cat([y_sweep, torch.randint(0, 10, (n_random,), generator=g)])
    return x, w, y


def reference_family_logits(kind, x, w, b, y, cfg, progress, steps_per_epoch):
    """Each kind's logits from its paper's formula, in float64, angle by acos (independent of arcdist.heads)."""
    x, w = x.double(), w.double()
    if kind in ("softmax", "center"):
        return x @ w.t() + b.double()
    norm = x.norm(dim=1, keepdim=True)
    cos = ((x / norm) @ (w / w.norm(dim=1, keepdim=True)).t()).clamp(-1, 1)
    out = cos.clone()
    warmup = getattr(cfg, "margin_warmup_epochs", 0.0)
    f = min(1.0, progress / warmup) if warmup > 0 else 1.0
    for i, c in enumerate(y.tolist()):
        theta = math.acos(cos[i, c].item())
        if kind == "cosface":
            out[i, c] = cos[i, c] - cfg.margin * f
        elif kind == "arcface" and cfg.easy_margin:  # insightface's easy_margin: no margin past 90 degrees
            m = cfg.margin * f
            out[i, c] = math.cos(theta + m) if cos[i, c] > 0 else cos[i, c]
        elif kind == "arcface":
            m = cfg.margin * f
            out[i, c] = math.cos(theta + m) if theta + m <= math.pi else math.cos(theta) - m * math.sin(m)
        elif kind == "combined":
            m1, m2, m3 = 1 + (cfg.margins[0] - 1) * f, cfg.margins[1] * f, cfg.margins[2] * f
            t = m1 * theta + m2
            if m1 == 1:
                out[i, c] = (math.cos(t) if t <= math.pi else math.cos(theta) - m2 * math.sin(m2)) - m3
            else:
                k = math.floor(t / math.pi)
                out[i, c] = (-1) ** k * math.cos(t) - 2 * k - m3
        elif kind == "sphereface":
            m = int(cfg.margin)
            k = min(m - 1, math.floor(theta * m / math.pi))
            psi = (-1) ** k * math.cos(m * theta) - 2 * k
            base, gamma, power, low = cfg.anneal
            lam = max(low, base * (1 + gamma * progress * steps_per_epoch) ** -power)
            out[i, c] = (lam * math.cos(theta) + psi) / (1 + lam)
    if kind == "sphereface":
        return out * norm * cfg.scale
    return out * (norm if cfg.scale_by == "norm" else cfg.scale)  # "learned" starts at cfg.scale


CASES = [("softmax", {}), ("normface", {}), ("sphereface", dict(margin=4.0)), ("sphereface", dict(margin=3.0)),
         ("sphereface", dict(margin=2.0, anneal=(0.0, 0.0, 1.0, 0.0))), ("cosface", {}), ("cosface", dict(margin=0.35)),
         ("arcface", {}), ("arcface", dict(margin=0.5)), ("arcface", dict(easy_margin=True)),
         ("arcface", dict(easy_margin=True, margin=0.5, scale_by="norm")), ("combined", {}), ("combined", dict(margins=(1.0, 0.3, 0.2))),
         ("combined", dict(margins=(2.0, 0.2, 0.1))), ("combined", dict(margins=(1.35, 0.5, 0.0))), ("center", {}),
         # head.scale_by: the feature's own norm, or a learned s (at its starting value)
         ("arcface", dict(scale_by="norm")), ("arcface", dict(scale_by="norm", margin=0.5)),
         ("arcface", dict(scale_by="learned", scale=12.0)), ("normface", dict(scale_by="norm")),
         ("cosface", dict(scale_by="norm")), ("combined", dict(scale_by="norm"))]


@pytest.mark.parametrize("progress", [0.25, 3.0])
@pytest.mark.parametrize("kind,changes", CASES)
def test_every_head_equals_its_float64_formula(kind, changes, progress):
    cfg = head_of_kind(HeadConfig(), kind).replace(**changes)
    x, w, y = spread_inputs()
    head = build_head(cfg, steps_per_epoch=50)
    with torch.no_grad():
        head.weight.copy_(w)
        if hasattr(head, "bias"):
            head.bias.copy_(torch.linspace(-1, 1, 10))
    got = head(x, y, progress)
    want = reference_family_logits(kind, x, w, getattr(head, "bias", None), y, cfg, progress, 50)
    assert got.dtype == torch.float32 and got.shape == (len(y), 10)
    # fp32 against float64; the sqrt's clamp at cos = 1 moves cos(theta + m) by sqrt(1e-7) sin(m) (the old test's bound)
    scale = float(want.detach().abs().max())
    torch.testing.assert_close(got.double(), want, atol=2e-4 * max(scale, 1.0), rtol=1e-5)
    torch.testing.assert_close(F.cross_entropy(got, y).double(), F.cross_entropy(want, y), atol=1e-4, rtol=1e-5)
    # the prediction rule: the logits without margin
    plain = reference_family_logits(kind if kind in ("softmax", "center") else "normface", x, w,
                                    getattr(head, "bias", None), y, SimpleNamespace(scale=1.0, scale_by="fixed"), progress, 50)
    if kind == "sphereface":
        plain = plain * x.double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(head.predict(x).double(), plain, atol=1e-5 * float(plain.detach().abs().max()), rtol=1e-5)


def test_sweep_reaches_every_branch():
    """The inputs above cover each psi piece of m = 4 and the fallbacks past pi - m (else the formula test is weak)."""
    x, w, y = spread_inputs()
    cos = F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).t()
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1, 1)).squeeze(1)
    assert set(torch.floor(theta * 4 / math.pi).clamp(max=3).long().tolist()) == {0, 1, 2, 3}
    assert (theta > math.pi - 0.5).sum() >= 3 and (theta < 0.1).sum() >= 3


def test_sphereface_annealing_follows_the_release_schedule():
    anneal = head_of_kind(HeadConfig(), "sphereface").anneal
    assert anneal == (1000.0, 0.12, 1.0, 5.0)
    assert sphere_lambda(anneal, 0) == 1000.0
    assert sphere_lambda(anneal, 100) == pytest.approx(1000 / 13)
    assert sphere_lambda(anneal, 10_000) == 5.0


pml = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning (a dev dependency)")


def pml_loss(loss_fn, w, x, y):
    loss_fn.W.data = w.t().clone().double()
    return loss_fn(x.double(), y)


@pytest.mark.parametrize("kind,changes,make", [
    ("cosface", dict(margin=0.35, scale=30.0), lambda: pml.CosFaceLoss(10, 2, margin=0.35, scale=30)),
    ("arcface", dict(margin=0.5, scale=30.0), lambda: pml.ArcFaceLoss(10, 2, margin=math.degrees(0.5), scale=30)),
    ("sphereface", dict(margin=4.0, anneal=(0.0, 0.0, 1.0, 0.0)), lambda: pml.SphereFaceLoss(10, 2, margin=4, scale=1)),
    ("sphereface", dict(margin=3.0, anneal=(0.0, 0.0, 1.0, 0.0)), lambda: pml.SphereFaceLoss(10, 2, margin=3, scale=1)),
])
def test_heads_equal_pytorch_metric_learning(kind, changes, make):
    cfg = head_of_kind(HeadConfig(), kind).replace(**changes)
    if hasattr(cfg.params, "margin_warmup_epochs"):
        cfg = cfg.replace(margin_warmup_epochs=0.0)
    x, w, y = spread_inputs(seed=1)
    head = build_head(cfg)
    with torch.no_grad():
        head.weight.copy_(w)
    ours = F.cross_entropy(head(x, y, 0.0).double(), y)
    torch.testing.assert_close(ours, pml_loss(make(), w, x, y), atol=1e-4, rtol=1e-5)


def test_normface_equals_normalized_softmax_and_sphereface_unit_w_equals_large_margin_softmax():
    x, w, y = spread_inputs(seed=2)
    head = build_head(head_of_kind(HeadConfig(scale=20.0), "normface"))
    assert head.scale == 16.0  # the kind's default replaced the scale given before it; set it after the kind
    head = build_head(head_of_kind(HeadConfig(), "normface").replace(scale=20.0))
    with torch.no_grad():
        head.weight.copy_(w)
    ours = F.cross_entropy(head(x, y, 0.0).double(), y)
    # pml's NormalizedSoftmaxLoss normalises W only: given unit features it is NormFace with s = 1 / temperature
    torch.testing.assert_close(ours, pml_loss(pml.NormalizedSoftmaxLoss(10, 2, temperature=1 / 20), w,
                                              F.normalize(x, dim=1), y), atol=1e-4, rtol=1e-5)
    unit = F.normalize(w, dim=1)  # L-Softmax scales by |W||x|; with unit rows it is A-Softmax
    sphere = build_head(head_of_kind(HeadConfig(), "sphereface").replace(anneal=(0.0, 0.0, 1.0, 0.0)))
    with torch.no_grad():
        sphere.weight.copy_(unit)
    ours = F.cross_entropy(sphere(x, y, 0.0).double(), y)
    torch.testing.assert_close(ours, pml_loss(pml.LargeMarginSoftmaxLoss(10, 2, margin=4), unit, x, y),
                               atol=1e-4, rtol=1e-5)


def test_combined_contains_arcface_cosface_and_normface_exactly():
    x, w, y = spread_inputs(seed=3)
    combined = lambda m: build_head(head_of_kind(HeadConfig(), "combined").replace(margins=m))  # noqa: E731
    others = {"arcface": ((1.0, 0.3, 0.0), dict(margin=0.3)), "cosface": ((1.0, 0.0, 0.2), dict(margin=0.2)),
              "normface": ((1.0, 0.0, 0.0), {})}
    for kind, (margins, changes) in others.items():
        a, b = combined(margins), build_head(head_of_kind(HeadConfig(), kind).replace(**changes))
        for h in (a, b):
            with torch.no_grad():
                h.weight.copy_(w)
        assert torch.equal(a(x, y, 5.0), b(x, y, 5.0)), kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("feature", [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
def test_every_head_has_finite_gradients_at_cos_plus_minus_one_and_zero_feature(kind, feature):
    head = build_head(head_of_kind(HeadConfig(), kind))
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * (head.weight.shape[0] - 1)))
    x = torch.tensor([feature], requires_grad=True)
    y = torch.tensor([0])
    loss = head.loss(head(x, y, 5.0), x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_center_loss_value_gradient_and_the_papers_center_update():
    cfg = head_of_kind(HeadConfig(), "center")
    assert (cfg.center_weight, cfg.center_alpha) == (0.1, 0.5)
    head = build_head(cfg)
    head.centers[2] = torch.tensor([1.0, 1.0])
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 2])
    reg = head.center_loss(x, y)
    # lambda/2 * mean |x - c_y|^2 = 0.05 * (1 + 9 + 4 + 2) / 4
    assert reg.item() == pytest.approx(0.05 * 16 / 4)
    reg.backward()
    torch.testing.assert_close(x.grad, 0.1 * (x.detach() - torch.tensor([[0.0, 0], [0, 0], [0, 0], [1, 1]])) / 4)
    assert torch.equal(head.centers[0], torch.zeros(2))  # nothing moves before the step is applied
    head.after_step()
    # c_j -= alpha * sum_i (c_j - x_i) / (1 + n_j): class 0: -0.5 * (-4/3, 0); class 1: -0.5 * (0, -2/2);
    # class 2: -0.5 * ((1, 1) - (2, 2)) / 2; the other classes have no samples and stay at 0
    want = torch.zeros(10, 2)
    want[0], want[1], want[2] = torch.tensor([2 / 3, 0.0]), torch.tensor([0.0, 0.5]), torch.tensor([1.25, 1.25])
    torch.testing.assert_close(head.centers, want)
    head.after_step()  # a second call without a new loss changes nothing
    torch.testing.assert_close(head.centers, want)


def test_kind_switch_sets_the_kinds_defaults_in_any_order_and_checks_its_margin():
    from arcdist.config import ConfigError, apply_overrides, validate
    from arcdist.variants import get_variant

    base = get_variant("A6").config
    a = apply_overrides(base, ["head.margin=0.3", "head.kind=cosface"])
    b = apply_overrides(base, ["head.kind=cosface", "head.margin=0.3"])
    assert a == b and a.head.kind == "cosface" and a.head.margin == 0.3
    assert (a.head.init, a.head.order, a.head.freeze) == (base.head.init, base.head.order, base.head.freeze)
    assert apply_overrides(base, ["head.kind=sphereface"]).head.margin == 4.0
    with pytest.raises(ConfigError, match=r"integer 1\.\.8 for sphereface.*head\.margin=4"):
        validate(apply_overrides(base, ["head.kind=sphereface", "head.margin=2.5"]))
    with pytest.raises(ConfigError, match=r"\[0, 1\) for cosface"):
        validate(apply_overrides(base, ["head.kind=cosface", "head.margin=1.5"]))
    with pytest.raises(ConfigError, match=r"head.margins must be"):
        validate(apply_overrides(base, ["head.kind=combined", "head.margins=(0.5,0.1,0.1)"]))
    with pytest.raises(ConfigError, match="expected one of"):
        apply_overrides(base, ["head.kind=lsoftmax"])
    assert set(HEADS) == set(KINDS)


@pytest.mark.slow
def test_every_head_trains_one_epoch_on_two_ranks_with_every_row_gathered_once(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import ROOT, cli_env, free_port, make_tiny_mnist

    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=203, seed=7)
    out = tmp_path / "heads.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests" / "two_rank_heads.py"), str(data), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    found = json.loads(out.read_text())
    from arcdist.data import load_dataset

    want_labels = load_dataset("mnist", data, download=False).test_y.tolist()
    assert list(found) == list(HEADS)
    for kind, r in found.items():
        assert r["world"] == 2 and r["rows"] == 203 and r["labels"] == want_labels, kind
        assert math.isfinite(r["loss"]) and r["ranks_equal"], kind
        assert "weight" in r["changed"], kind  # W trained (L-* rows learn it)
    assert found["softmax"]["keys"] == ["bias", "weight"] and "bias" in found["softmax"]["changed"]
    assert found["center"]["keys"] == ["bias", "centers", "weight"] and "centers" in found["center"]["changed"]


def test_each_head_names_itself_and_its_margin_under_the_circle_plot():
    captions = {kind: build_head(head_of_kind(HeadConfig(), kind), steps_per_epoch=100).caption(1.0) for kind in HEADS}
    assert all(caption.startswith(f"{kind}:") or caption.startswith(f"{kind},") for kind, caption in captions.items())
    assert captions["arcface"] == "arcface: s = 16, margin 11.5 deg"  # 0.2 rad after its 1-epoch warm-up
    assert captions["sphereface"] == "sphereface: m = 4 (times theta), lambda = 76.9"  # 1000 / (1 + 0.12 * 100)
    assert captions["cosface"] == "cosface: s = 16, cosine margin 0.10"
    assert captions["combined"] == "combined: s = 16, (m1, m2, m3) = (1.00, 0.10, 0.05)"
    assert captions["normface"] == "normface, s = 16, no margin"
    assert captions["softmax"] == "softmax: W x + b, no margin"
    assert captions["adacos"] == "adacos: s = 3.11 (adaptive), no margin"
    assert captions["subcenter"] == "subcenter: s = 16, margin 11.5 deg, 3 sub-centres"
    easy = build_head(HeadConfig(easy_margin=True)).caption(1.0)
    assert easy == "arcface: s = 16, margin 11.5 deg, easy"
    norm = build_head(head_of_kind(HeadConfig(), "arcface").replace(scale_by="norm"))
    assert norm.caption(1.0) == "arcface: s = |x|, margin 11.5 deg"


def test_norm_scaled_arcface_is_the_unit_scale_logits_times_each_features_norm_and_grows_with_it():
    """s = |x|: each row is ArcFace's logits at s = 1 times that sample's norm (float64 reference), so a sample's
    loss and the net's control of it follow its norm, as with softmax and SphereFace."""
    x, w, y = spread_inputs(seed=3)
    head = build_head(head_of_kind(HeadConfig(), "arcface").replace(scale_by="norm", margin_warmup_epochs=0.0))
    with torch.no_grad():
        head.weight.copy_(w)
    got = head(x, y, 0.0).double()
    unit = reference_logits(x, w, y, 1.0, 0.2)
    torch.testing.assert_close(got, unit * x.double().norm(dim=1, keepdim=True), atol=1e-5 * float(got.abs().max()),
                               rtol=1e-5)
    # a sample on its class direction (W evenly spread, 36 deg apart): its loss falls as its norm grows, while a
    # fixed s = 16 leaves the same loss (0.12: its floor in 2-D) at every norm
    even = build_head(head_of_kind(HeadConfig(init="even"), "arcface").replace(scale_by="norm", margin_warmup_epochs=0))
    fixed = build_head(head_of_kind(HeadConfig(init="even"), "arcface").replace(margin_warmup_epochs=0))
    on = even.weight[:1].detach()
    label = torch.tensor([0])
    losses = [F.cross_entropy(even(on * r, label, 0.0), label).item() for r in (1.0, 4.0, 16.0, 64.0)]
    assert losses[0] > losses[1] > losses[2] > losses[3] and losses[3] < 1e-3
    fixed_losses = [F.cross_entropy(fixed(on * r, label, 0.0), label).item() for r in (1.0, 32.0)]
    assert fixed_losses[0] == pytest.approx(fixed_losses[1]) and fixed_losses[0] > 0.1


def test_learned_scale_is_one_trained_saved_parameter():
    cfg = head_of_kind(HeadConfig(), "arcface").replace(scale_by="learned", scale=16.0)
    head = build_head(cfg)
    assert torch.exp(head.log_scale).item() == pytest.approx(16.0)
    assert "log_scale" in head.state_dict()
    from arcdist.heads import param_count
    assert param_count(cfg) == 21 == sum(p.numel() for p in head.parameters())
    x, y = torch.randn(32, 2), torch.randint(0, 10, (32,))
    F.cross_entropy(head(x, y, 1.0), y).backward()
    assert head.log_scale.grad is not None and head.log_scale.grad.item() != 0.0
    assert head.caption(1.0) == "arcface: s = 16.0 (learned), margin 11.5 deg"


def test_scale_by_is_refused_for_the_kinds_that_have_no_s():
    from arcdist.config import Config, ConfigError, apply_overrides, validate

    with pytest.raises(ConfigError, match=r"head.scale_by is not a field of the sphereface head \(it belongs to "
                                          r"arcface, combined, cosface, normface, subcenter\)"):
        validate(apply_overrides(Config(), ["head.kind=sphereface", "head.scale_by=norm"]))
    validate(apply_overrides(Config(), ["head.scale_by=norm"]))  # arcface: fine
    # a kind switch resets it with the kind's defaults; --set applies the kind first, so any order keeps it
    assert head_of_kind(HeadConfig(scale_by="norm"), "normface").scale_by == "fixed"
    assert not hasattr(head_of_kind(HeadConfig(scale_by="norm"), "softmax").params, "scale_by")
    assert apply_overrides(Config(), ["head.scale_by=norm", "head.kind=cosface"]).head.scale_by == "norm"


@pytest.mark.parametrize("shape,kernel,padding,channels_last", [
    ((3, 6, 3, 3), 3, 0, False),  # the kernel covers the input: computed as a matrix product
    ((3, 6, 3, 3), 3, 0, True),
    ((3, 6, 1, 1), 1, 0, True),
    ((3, 6, 5, 5), 3, 0, False),  # larger input: the ordinary convolution
    ((3, 6, 3, 3), 3, 1, False),  # padded: the ordinary convolution
])
def test_conv2d_equals_torch_conv2d_in_float64(shape, kernel, padding, channels_last):
    from arcdist.model import Conv2d

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(6, 4, kernel, 1, padding, bias=True).double()
    ours = Conv2d(6, 4, kernel, 1, padding, bias=True).double()
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ref, ours = ref.to(memory_format=fmt), ours.to(memory_format=fmt)
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt)
    covers = shape[-1] == kernel and padding == 0
    calls = []
    conv_forward = ours._conv_forward
    ours._conv_forward = lambda *a: calls.append(1) or conv_forward(*a)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert len(calls) == (0 if covers else 1)  # the matrix product where the kernel covers the input
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
    # DDP copies (and warns of) a gradient whose strides are not its parameter's: train.channels_last on 2 ranks
    assert ours.weight.grad.stride() == ours.weight.stride()


def test_config_json_written_before_heads_owned_their_config_still_loads():
    """Old run folders hold one flat head dict with every kind's fields; each kind keeps its own, drops the rest."""
    import json

    from arcdist.config import from_dict, to_dict

    old = json.loads((__import__("pathlib").Path(__file__).parent.parent / "results" / "losses" / "deep9"
                      / "deep9-arcface-s0" / "config.json").read_text())["config"]
    assert "anneal" in old["head"] and "center_weight" in old["head"]  # the old flat form
    cfg = from_dict(old)
    assert (cfg.head.kind, cfg.head.scale_by, cfg.head.margin, cfg.head.order) == ("arcface", "norm", 0.2,
                                                                                   (4, 9, 7, 1, 2, 3, 5, 8, 0, 6))
    assert not hasattr(cfg.head, "anneal") and from_dict(to_dict(cfg)) == cfg
    for kind in ("sphereface", "center", "softmax"):
        flat = dict(old["head"], kind=kind)
        assert from_dict(dict(old, head=flat)).head.params == HEADS[kind].Config(**{
            f.name: _tuple(flat[f.name]) for f in dataclasses.fields(HEADS[kind].Config)})


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.parametrize("kind, changes", [(k, {}) for k in HEADS] + [("subcenter", dict(sub_centers=3))])
def test_the_saved_geometry_predicts_as_the_live_head(kind, changes):
    """One prediction rule: what the explorer and `arcdist evaluate` compute from a features file's geometry
    (arcdist.heads.geometry_scores) picks the class the live head's `predict` picks, for every kind."""
    from arcdist.heads import geometry_scores, predicted_labels

    torch.manual_seed(0)
    cfg = head_of_kind(HeadConfig(num_classes=7), kind).replace(**changes) if changes else \
        head_of_kind(HeadConfig(num_classes=7), kind)
    head = build_head(cfg, feature_dim=3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(500, 3) * 3
    live = head.predict(x).argmax(1)
    geometry = head.geometry()
    assert torch.equal(geometry_scores(x, geometry).argmax(1), live)
    rows = torch.tensor([1, 3, 4, 6, 8, 9, 11])  # a run trained on 7 of 12 classes: rows name them
    assert torch.equal(predicted_labels(x, dict(geometry, rows=rows)), rows[live])
