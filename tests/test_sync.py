"""train.sync_every: the flags read back every K steps give the very results of reading them every step."""
import pytest
import torch
from safetensors.torch import load_file

from arcdist import preempt
from arcdist.status import RunStatus
from arcdist.trainer import Stopped
from helpers import metric_rows as rows, cli_env, make_tiny_mnist, run_train, summary, tiny_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(tmp_path_factory.mktemp("sync"), n_train=320, n_test=64, seed=7)


def trainer(data, tmp_path, every, *extra, nan_at=None):
    """An in-process fp32 T0 (test backbone) trainer (batch 32: 10 steps per epoch) reading its flags every `every` steps."""
    from accelerate import Accelerator

    from arcdist.train import Faults, Trainer, build_config, parse_args

    argv = ["--variant", "T0", "--data-dir", str(data), "--mixed-precision", "no", "--set", "train.channels_last=false",
            "--set", "data.batch_size=32", "--set", f"train.sync_every={every}", *extra]
    return Trainer(build_config(parse_args(argv)), tmp_path / f"k{every}", Accelerator(cpu=True), no_progress=True,
                   faults=Faults(nan_at=nan_at))


def everything(t):
    """Every tensor a step changes: parameters, buffers, EMA, optimizer states; and the schedules' counts."""
    out = [v for m in t.stepper.state_modules() for v in m.state_dict().values()]
    for opt in (t.opt_net, t.opt_head):
        out += [v for state in opt.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return out, [t.sched_net.scheduler.last_epoch, t.sched_head.scheduler.last_epoch,
                 t.opt_net.param_groups[0]["lr"], t.state.step, t.state.loss_sum]


def assert_same(a, b):
    (ta, ha), (tb, hb) = everything(a), everything(b)
    assert ha == hb and len(ta) == len(tb)
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))


def test_sync_every_resolves_to_one_on_a_cpu_and_is_validated(data, tmp_path):
    from arcdist.config import ConfigError

    assert trainer(data, tmp_path, 0).stepper.every == 1
    assert trainer(data, tmp_path, 8).stepper.every == 8
    with pytest.raises(ConfigError, match="train.sync_every must be >= 0"):
        trainer(data, tmp_path, -1)


@pytest.mark.slow
@pytest.mark.parametrize("nan_step", [0, 3, 7, 9])  # first / middle / last step of a window, the epoch's last
def test_a_nan_inside_a_window_is_undone_and_reported_as_with_every_step(data, tmp_path, nan_step):
    # EMA on: the average, like the weights, BatchNorm statistics, optimizer states and schedules, must be restored
    one = trainer(data, tmp_path, 1, "--set", "train.ema=0.9", nan_at=(2, nan_step))
    eight = trainer(data, tmp_path, 8, "--set", "train.ema=0.9", nan_at=(2, nan_step))
    for t in (one, eight):
        assert "train_loss" in t.train_epoch(0)
        t.state.epoch, t.state.step, t.state.loss_sum = 1, 0, 0.0
    assert_same(one, eight)
    got = [t.train_epoch(1) for t in (one, eight)]
    assert got[0] == got[1] == Stopped(RunStatus.DIVERGED, dict(epoch=2, step=nan_step, tensors=["loss", "gradients"]))
    assert_same(one, eight)  # steps before the bad one applied, the bad one and any later ones not


def test_a_stop_request_is_noticed_at_the_next_read(data, tmp_path):
    steps = {}
    for every in (1, 4):
        t = trainer(data, tmp_path, every)
        preempt.request_stop()
        try:
            assert t.train_epoch(0) == Stopped(RunStatus.PREEMPTED)
        finally:
            preempt.request_stop(False)
        steps[every] = t.state.step
    assert steps == {1: 1, 4: 4}


@pytest.mark.slow
def test_every_eight_steps_equals_every_step(data, tmp_path):
    """A whole tiny fp32 run: the same metrics, losses and final weights."""
    out = {k: tmp_path / f"k{k}" for k in (1, 8)}
    for k, d in out.items():
        run_train(tiny_args(data, d, 2, "--set", f"train.sync_every={k}", "--plot-every", "0", batch=32))
    assert rows(out[1]) == rows(out[8])
    a, b = (load_file(d / "checkpoints" / "epoch-0002" / "model.safetensors") for d in out.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("nan_at,policy", [("2:3", "stop"), ("1:5", "rollback")])
def test_divergence_through_the_entry_point_matches_every_step(data, tmp_path, nan_at, policy):
    # rollback at 1:5 has no checkpoint to go back to: the run restarts from the state it started from (kept in
    # memory), whatever the window undid
    out = {k: tmp_path / f"k{k}" for k in (1, 8)}
    for k, d in out.items():
        run_train(tiny_args(data, d, 2, "--set", f"train.sync_every={k}", "--set", f"train.on_diverge={policy}",
                            "--plot-every", "0", batch=32), env=cli_env(ARCDIST_FAULT_NAN=nan_at))
    s1, s8 = ({k: v for k, v in summary(d).items() if k not in ("wall_time_s", "time_s")} for d in out.values())
    assert s1 == s8
    if policy == "stop":
        assert s8["diverged_at"] == {"epoch": 2, "step": 3, "tensors": ["loss", "gradients"]}
    else:
        assert s8["status"] == "finished" and s8["rollbacks"] == 1
    assert rows(out[1]) == rows(out[8])
    last = sorted((out[1] / "checkpoints").iterdir())[-1].name
    a, b = (load_file(d / "checkpoints" / last / "model.safetensors") for d in out.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
