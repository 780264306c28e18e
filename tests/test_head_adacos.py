"""AdaCos (arcdist/heads/adacos.py): the adaptive s equals the paper's formula in float64, every batch."""
import math

import pytest
import torch
import torch.nn.functional as F

from arcdist.config import Config, apply_overrides, validate
from arcdist.heads import HeadConfig, build_head


def reference_scale(s: float, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> float:
    """Zhang et al. 2019, eq. 15-16, float64: s' = log(B_avg) / cos(min(pi/4, theta_med)) at the previous s."""
    cos = F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).t()
    n = len(y)
    b_avg = sum(math.exp(s * cos[i, j].item()) for i in range(n) for j in range(cos.shape[1]) if j != y[i]) / n
    thetas = sorted(math.acos(max(-1.0, min(1.0, cos[i, y[i]].item()))) for i in range(n))
    theta_med = thetas[(n - 1) // 2]  # torch.median's (lower) median
    return math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))


def test_scale_follows_the_formula_batch_after_batch_and_logits_are_s_cos():
    g = torch.Generator().manual_seed(0)
    head = build_head(HeadConfig(kind="adacos"))
    assert head.s.item() == pytest.approx(math.sqrt(2) * math.log(9), rel=1e-7)  # the fixed AdaCos s for 10 classes, where it starts
    s = head.s.item()
    for batch in range(4):
        x, y = torch.randn(64, 2, generator=g) * (1 + batch), torch.randint(0, 10, (64,), generator=g)
        logits = head(x, y, 0.0)
        s = reference_scale(s, x, head.weight.detach(), y)
        assert head.s.item() == pytest.approx(s, rel=1e-5)
        cos = F.normalize(x.double(), dim=1) @ F.normalize(head.weight.detach().double(), dim=1).t()
        torch.testing.assert_close(logits.double(), s * cos, atol=1e-4, rtol=1e-5)
    assert "s" in head.state_dict()  # saved with the model: a resumed run continues from the same s


def test_fixed_adacos_keeps_its_scale_and_prediction_is_the_cosine():
    head = build_head(HeadConfig(kind="adacos", dynamic=False))
    x, y = torch.randn(32, 2), torch.randint(0, 10, (32,))
    before = head.s.item()
    logits = head(x, y, 0.0)
    assert head.s.item() == before
    torch.testing.assert_close(logits, before * head.predict(x))
    cfg = apply_overrides(Config(), ["head.kind=adacos", "head.dynamic=false"])
    validate(cfg)
    assert cfg.head.dynamic is False and head.caption(0.0) == "adacos: s = 3.11 (fixed), no margin"
