"""train.compile and train.fused_optim: switches for the GPU path, off by default; on a CPU they must stay correct."""
import shutil

import pytest
import torch

from helpers import make_tiny_mnist

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(tmp_path_factory.mktemp("compile"), n_train=256, n_test=64, seed=11)


def trainer(data, tmp_path, name, *sets, variant="T0.1"):
    from accelerate import Accelerator

    from arcdist.train import Trainer, build_config, parse_args

    argv = ["--variant", variant, "--data-dir", str(data), "--mixed-precision", "no", "--set", "train.channels_last=false",
            "--set", "data.batch_size=32"] + [a for s in sets for a in ("--set", s)]
    return Trainer(build_config(parse_args(argv)), tmp_path / name, Accelerator(cpu=True), no_progress=True)


def steps(t):
    losses = []
    for i in range(STEPS):
        x, y = t.train_data.batch(torch.arange(i * 32, (i + 1) * 32))
        loss, bad, _ = t.stepper.train_step(x, y, 1.0)  # 1 epoch: the whole margin
        assert bad == []
        losses.append(loss)
    return losses


def weights(t):
    return t.acc.unwrap_model(t.backbone).state_dict()


def test_defaults_are_off(data, tmp_path):
    t = trainer(data, tmp_path, "plain")
    assert t.cfg.train.compile == "off" and t.cfg.train.fused_optim is False
    assert not t.opt_net.optimizer.defaults.get("fused")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                    reason="torch.compile's inductor needs a C++ compiler on a CPU")
@pytest.mark.slow
def test_compiled_backbone_trains_and_evaluates_like_eager(data, tmp_path):
    """Inductor fuses and reorders float operations, so not bits: the 4 steps' losses agree to 1e-4 relative
    (seen: 3e-6), every weight and BatchNorm statistic to 1 % of its tensor's largest magnitude (seen: 0.3 %;
    SGD at the start of training amplifies the rounding differences step by step; Adam does so
    more, turning gradient differences of 1e-6 into whole steps of its learning rate)."""
    eager, compiled = trainer(data, tmp_path, "eager"), trainer(data, tmp_path, "compiled", "train.compile=default")
    assert weights(eager).keys() == weights(compiled).keys()  # in place: checkpoints keep their keys
    torch.testing.assert_close(steps(compiled), steps(eager), rtol=1e-4, atol=1e-5)
    for name, w in weights(eager).items():
        if w.is_floating_point():
            assert (weights(compiled)[name] - w).abs().max() <= 1e-2 * w.abs().max() + 1e-6, name
    (m_eager, f_eager, _), (m_comp, f_comp, _) = eager.evaluate(), compiled.evaluate()
    torch.testing.assert_close(f_comp, f_eager, rtol=1e-3, atol=1e-4)
    assert m_comp["accuracy"] == pytest.approx(m_eager["accuracy"], abs=2 / 64)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["T0", "T0.1"])  # Adam; SGD with momentum (the test backbone)
def test_fused_optimizers_step_like_the_default_ones(data, tmp_path, variant):
    plain = trainer(data, tmp_path, "plain", variant=variant)
    fused = trainer(data, tmp_path, "fused", "train.fused_optim=true", variant=variant)
    assert fused.opt_net.optimizer.defaults["fused"] and fused.opt_head.optimizer.defaults["fused"]
    torch.testing.assert_close(steps(fused), steps(plain), rtol=1e-4, atol=1e-5)
    for name, w in weights(plain).items():
        if w.is_floating_point():  # (the same bounds as the compiled step above: not bits)
            assert (weights(fused)[name] - w).abs().max() <= 1e-2 * w.abs().max() + 1e-6, name
