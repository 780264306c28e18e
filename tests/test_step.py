"""The step's settings, gradient clipping (train.clip_grad_norm) and the gradient norm in the epoch's records."""
import dataclasses
import json
import math

import pytest
import torch

from helpers import EXACT, make_tiny_mnist


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(tmp_path_factory.mktemp("step"), n_train=320, n_test=64, seed=7)


@pytest.fixture
def precision_state():
    """Accelerate keeps one mixed-precision setting per process: forget it before and after the test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def trainer(data, run_dir, *extra, precision="no"):
    """An in-process T0 (test backbone) trainer on the CPU (batch 32: 10 steps per epoch)."""
    from accelerate import Accelerator

    from arcdist.train import Faults, Trainer, build_config, parse_args

    argv = ["--variant", "T0", "--data-dir", str(data), *EXACT, "--mixed-precision", precision,
            "--set", "data.batch_size=32", *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(build_config(parse_args(argv)), run_dir, Accelerator(cpu=True, mixed_precision=precision),
                   no_progress=True, faults=Faults())


def params(t):
    return [p.detach().clone() for m in (t.backbone, t.head) for p in m.parameters()]


def one_step(t, x, y):
    """One step read back at once, as the trainer takes it: its Outcome."""
    return t.stepper.step(0, 0, x, y, 0.2, False, True, None)


def test_the_stepper_is_built_from_named_settings(data, tmp_path):
    from arcdist.config import ConfigError
    from arcdist.step import StepSettings

    t = trainer(data, tmp_path / "a", "--set", "train.clip_grad_norm=2.5", "--set", "train.sync_every=4")
    s = t.stepper.settings
    assert (s.every, s.clip_grad_norm, s.head_trains, t.stepper.every) == (4, 2.5, True, 4)
    assert t.stepper.models.optimizers == (t.opt_net, t.opt_head)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.every = 1  # type: ignore[misc]
    assert StepSettings().clip_grad_norm == 0.0 and trainer(data, tmp_path / "b").stepper.settings.clip_grad_norm == 0
    with pytest.raises(ConfigError, match=r"train.clip_grad_norm must be >= 0 .*--set train.clip_grad_norm=1"):
        trainer(data, tmp_path / "c", "--set", "train.clip_grad_norm=-1")


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_clipping_scales_the_gradients_by_min_1_c_over_norm(data, tmp_path, precision, precision_state):
    clip = 1.0
    reference = trainer(data, tmp_path / "ref", precision=precision)
    clipped = trainer(data, tmp_path / "clip", "--set", f"train.clip_grad_norm={clip}", precision=precision)
    x, y = reference.train_data.batch(torch.arange(32))
    assert all(torch.equal(a, b) for a, b in zip(params(reference), params(clipped)))

    # by hand: the unclipped step's gradients times min(1, c / norm) (torch's 1e-6 guards a zero norm), then the step
    stepper = reference.stepper
    stepper._forward_backward(x, y, 0.2, False)
    grads = [p.grad for m in (reference.backbone, reference.head) for p in m.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    assert norm > clip  # the clipping acts
    coef = (clip / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef)
    stepper._apply(norm)

    outcome = one_step(clipped, x, y)
    assert outcome.grad_norms == [norm.item()]  # the norm before clipping
    assert all(torch.equal(a, b) for a, b in zip(params(reference), params(clipped)))


def fp16_pair(data, tmp_path, init_scale, *extra):
    """Two identical trainers, the second with a loss scaler as Accelerate gives fp16 runs on a GPU."""
    plain = trainer(data, tmp_path / "plain", *extra)
    scaled = trainer(data, tmp_path / "scaled", *extra)
    scaled.acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    return plain, scaled


def test_fp16_clips_the_unscaled_gradients_unscaling_once(data, tmp_path, monkeypatch):
    plain, scaled = fp16_pair(data, tmp_path, 2.0 ** 10, "--set", "train.clip_grad_norm=1.0")
    x, y = plain.train_data.batch(torch.arange(32))
    clip, clipped = torch.nn.utils.clip_grads_with_norm_, []

    def spy(parameters, max_norm, total_norm, **kw):
        parameters = list(parameters)
        clip(parameters, max_norm, total_norm, **kw)
        clipped.append(torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]).item())

    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", spy)
    a, b = one_step(plain, x, y), one_step(scaled, x, y)
    assert clipped == pytest.approx([1.0, 1.0], rel=1e-4)  # the scaled gradients were unscaled before the clipping
    # a power-of-two scale and its inverse are exact: unscaled once, the clipped steps are the very same
    assert a.grad_norms == b.grad_norms and a.grad_norms[0] > 1.0
    assert all(torch.equal(p, q) for p, q in zip(params(plain), params(scaled)))
    assert scaled.acc.scaler.get_scale() == 2.0 ** 10
    b = one_step(scaled, x, y)  # the scaler's per-step state was reset: a second step unscales again
    assert b.losses and math.isfinite(b.grad_norms[0])


def test_fp16_overflow_with_clipping_skips_the_step(data, tmp_path):
    _, scaled = fp16_pair(data, tmp_path, 2.0 ** 127, "--set", "train.clip_grad_norm=1.0")
    x, y = scaled.train_data.batch(torch.arange(32))
    before = params(scaled)
    outcome = one_step(scaled, x, y)
    assert outcome.diverged is None and not math.isfinite(outcome.grad_norms[0])  # an overflow: no divergence
    assert all(torch.equal(p, q) for p, q in zip(before, params(scaled)))
    assert scaled.acc.scaler.get_scale() == 2.0 ** 126
    assert scaled.sched_net.scheduler.last_epoch == 0


def everything(t):
    out = [v for m in t.stepper.state_modules() for v in m.state_dict().values()]
    for opt in (t.opt_net, t.opt_head):
        out += [v for state in opt.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return out


def test_clipping_off_by_default_changes_nothing(data, tmp_path):
    # the default, an explicit 0, and a threshold no step reaches (gradients times exactly 1.0)
    runs = [trainer(data, tmp_path / name, *extra) for name, extra in
            (("default", ()), ("zero", ("--set", "train.clip_grad_norm=0")),
             ("high", ("--set", "train.clip_grad_norm=1e9")))]
    stats = [{k: v for k, v in t.train_epoch(0).items() if k not in ("epoch_time_s", "images_per_s")} for t in runs]
    assert stats[0] == stats[1] == stats[2]
    base = everything(runs[0])
    for t in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(base, everything(t)))


def test_grad_norm_mean_and_max_reach_metrics_the_epoch_line_and_wandb(data, tmp_path, capsys):
    rows, norms = {}, {}
    for every in (1, 4):  # 10 steps: windows of 4, 4 and 2
        t = trainer(data, tmp_path / f"k{every}", "--set", f"train.sync_every={every}")
        outcomes, step, logged = [], t.stepper.step, []
        t.stepper.step = lambda *a: outcomes.append(step(*a)) or outcomes[-1]
        t.acc.log = lambda values, step=None, **kw: logged.append(values)
        t.end_epoch(0, t.train_epoch(0), plot_every=0)
        norms[every] = [n for o in outcomes if o is not None for n in o.grad_norms]
        rows[every] = json.loads((tmp_path / f"k{every}" / "metrics.jsonl").read_text().splitlines()[-1])
        row = rows[every]
        assert len(norms[every]) == 10
        assert row["grad_norm_mean"] == sum(norms[every]) / 10 and row["grad_norm_max"] == max(norms[every])
        assert logged[-1]["grad_norm_mean"] == row["grad_norm_mean"]
        assert logged[-1]["grad_norm_max"] == row["grad_norm_max"]
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch 1/"))
        assert f"grad norm {row['grad_norm_mean']:.3g} (max {row['grad_norm_max']:.3g})" in line
        assert t.state.grad_norm_steps == 0  # reset with the epoch (trainer.json of an epoch's end)
    assert norms[1] == norms[4]
