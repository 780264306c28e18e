"""Faults lose nothing: atomic checkpoints, a killed rank, divergence, unsafe checkpoints, secret keys."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from arcdist.checkpoint import latest_checkpoint, write_checksums
from arcdist.tracking import read_offline_run
from helpers import metric_rows as rows, EXACT, ROOT, cli_env, make_tiny_mnist, run_train, tiny_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(tmp_path_factory.mktemp("rel"), n_train=384, n_test=64, seed=3)


def common(data, out, epochs=3):
    return tiny_args(data, out, epochs, batch=32)


@pytest.mark.slow
def test_half_written_checkpoints_are_never_chosen(data, tmp_path):
    out = tmp_path / "run"
    run_train(common(data, out, epochs=2))
    ck = out / "checkpoints"
    shutil.copytree(ck / "epoch-0002", ck / ".tmp-epoch-0003")  # a save interrupted before its rename
    shutil.copytree(ck / "epoch-0002", ck / "epoch-0004")
    (ck / "epoch-0004" / "trainer.json").unlink()  # renamed but unmarked: incomplete
    assert latest_checkpoint(out).name == "epoch-0002"
    run_train(["--no-progress", "--wandb", "disabled", "--resume", str(out), "--epochs", "3", "--data-dir", str(data)])
    assert [r["epoch"] for r in rows(out)] == [1, 2, 3]
    assert latest_checkpoint(out).name == "epoch-0003"


@pytest.mark.slow
def test_killed_rank_restarts_from_checkpoint_and_matches(data, tmp_path):
    straight = tmp_path / "straight"
    run_train(common(data, straight), world=2)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts",
           "1", str(ROOT / "arcdist" / "train.py"), *common(data, killed)]
    # rank 1 dies by SIGKILL before step 3 of epoch 2 (after epoch 1's checkpoint), in the first incarnation only.
    # The agent's shared TCP store keeps the dead round's gloo addresses (torch 2.14); a store per round avoids
    # them. Unbuffered output: the first incarnation's lines must reach the log although it is killed.
    env = cli_env(ARCDIST_FAULT_KILL="2:3", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    (tmp_path / "launcher.log").write_text(proc.stdout)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    # in order: the first start, epoch 1, the kill, one relaunch that continues from epoch 1's checkpoint
    events = re.findall(r"^(arcdist: cpu, |arcdist: fault: rank 1 killed at epoch 2, step 3$|epoch \d/3 )", out, re.M)
    assert events == ["arcdist: cpu, ", "epoch 1/3 ", "arcdist: fault: rank 1 killed at epoch 2, step 3",
                      "arcdist: cpu, ", "epoch 2/3 ", "epoch 3/3 "], out[-3000:]
    assert rows(killed) == rows(straight)


@pytest.mark.slow
def test_divergence_stops_cleanly_with_where_and_what(data, tmp_path):
    out = tmp_path / "div"
    args = [a for a in common(data, out) if a not in ("--wandb", "disabled")] + ["--wandb", "offline"]
    run_train(args, env=cli_env(ARCDIST_FAULT_NAN="2:3"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"] is True
    assert summary["diverged_at"] == {"epoch": 2, "step": 3, "tensors": ["loss", "gradients"]}
    assert rows(out)[-1]["status"] == "diverged" and rows(out)[-1]["diverged"]["step"] == 3
    assert len(rows(out)) == 2  # epoch 1 evaluated, epoch 2 stopped
    wb = read_offline_run(out)
    assert wb["summary"]["status"] == "diverged" and wb["summary"]["diverged"] is True


@pytest.mark.slow
def test_rollback_restores_checkpoint_with_half_the_lr(data, tmp_path):
    clean, rolled = tmp_path / "clean", tmp_path / "rolled"
    run_train(common(data, clean))
    run_train([*common(data, rolled), "--set", "train.on_diverge=rollback"], env=cli_env(ARCDIST_FAULT_NAN="2:3"))
    summary = json.loads((rolled / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rollbacks"] == 1
    a, b = rows(clean), rows(rolled)
    assert a[0] == b[0]  # epoch 1 identical, then the restart from its checkpoint at half the lr
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert b[2]["lr"] == pytest.approx(a[2]["lr"] / 2)


def test_a_rollback_before_the_first_checkpoint_starts_again_from_the_first_step(data, tmp_path):
    """Diverged at step 3 of epoch 1, no checkpoint yet: the run goes back to the state it started from, at half the
    learning rates, so its epoch 1 is a fresh run's at those rates (it replayed the epoch on top of steps 0-2)."""
    from arcdist.variants import get_variant

    rolled, half = tmp_path / "rolled", tmp_path / "half"
    run_train([*common(data, rolled, epochs=1), "--set", "train.on_diverge=rollback"],
              env=cli_env(ARCDIST_FAULT_NAN="1:3"))
    optim = get_variant("T0").config.optim
    run_train([*common(data, half, epochs=1), "--set", f"optim.lr={optim.lr / 2}", "--set",
               f"optim.head_lr={optim.head_lr / 2}"])
    assert json.loads((rolled / "summary.json").read_text())["rollbacks"] == 1
    keep = lambda r: {k: v for k, v in r.items() if "time" not in k and not k.endswith("_per_s")}  # noqa: E731
    assert [keep(r) for r in rows(rolled)] == [keep(r) for r in rows(half)]


@pytest.mark.slow
def test_unsafe_checkpoint_pickle_is_refused(data, tmp_path):
    out = tmp_path / "run"
    run_train(common(data, out, epochs=1))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Evil()}, latest_checkpoint(out) / "optimizer.bin")
    write_checksums(latest_checkpoint(out))  # as an attacker would: only the loader stands in the way
    proc = run_train(["--no-progress", "--wandb", "disabled", "--resume", str(out), "--epochs", "2",
                      "--data-dir", str(data)], check=False)
    assert proc.returncode == 2 and "is unreadable" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert (out / "checkpoints" / "failed-epoch-0001" / "optimizer.bin").is_file()  # moved aside, not deleted


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_wandb_key_never_written(data, tmp_path, mode):
    """Online against a local dead server is where a leak could happen (W&B tries to log in with the key, then
    arcdist falls back to offline); no file of the run folder or of W&B's own folders may hold the key."""
    out, home = tmp_path / "run", tmp_path / "home"
    secret = "0123456789abcdef0123456789abcdef01234567"
    args = [a for a in common(data, out, epochs=1) if a not in ("--wandb", "disabled")] + ["--wandb", mode]
    env = cli_env(WANDB_API_KEY=secret, HOME=str(home), WANDB_CONFIG_DIR=str(home / "config"),
                  WANDB_CACHE_DIR=str(home / "cache"), WANDB_BASE_URL="http://127.0.0.1:9",
                  ARCDIST_WANDB_INIT_TIMEOUT="5")
    env.pop("WANDB_MODE")
    proc = run_train(args, env=env, timeout=180)
    assert (mode == "online") == ("logging offline instead" in proc.stdout + proc.stderr)
    assert list(out.rglob("*.wandb"))  # W&B did write its run log, offline
    hits = [p for root in (out, home) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == []


@pytest.mark.slow
def test_grid_carries_on_past_a_diverged_run(data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "arcdist.grid", "--grid-id", "g", "--variants", "T0,T0.1",
                           "--epochs", "2", "--out", str(tmp_path), "--data-dir", str(data), "--jobs", "1",
                           "--wandb", "disabled", "--set", "data.batch_size=32", "--set", "train.retrieval=false",
                           "--", "--plot-every", "0"],
                          cwd=ROOT, env=cli_env(ARCDIST_FAULT_NAN="1:2"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = json.loads((tmp_path / "g" / "grid.json").read_text())["jobs"]
    assert [(j["variant"], j["status"]) for j in jobs] == [("T0", "diverged"), ("T0.1", "diverged")]


def fp16_trainers(data, tmp_path, init_scale):
    """Two identical CPU trainers, the second with a loss scaler as Accelerate gives fp16 runs on a GPU."""
    from accelerate import Accelerator

    from arcdist.train import Trainer, build_config, parse_args

    cfg = build_config(parse_args(["--variant", "T0", "--data-dir", str(data), "--set", "data.batch_size=64", *EXACT]))
    plain = Trainer(cfg, tmp_path / "plain", Accelerator(cpu=True), no_progress=True)
    scaled = Trainer(cfg, tmp_path / "scaled", Accelerator(cpu=True), no_progress=True)
    scaled.acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    return plain, scaled


def params(trainer):
    return [p.detach().clone() for m in (trainer.backbone, trainer.head) for p in m.parameters()]


def test_fp16_scaler_steps_both_optimizers_with_one_scale(data, tmp_path):
    plain, scaled = fp16_trainers(data, tmp_path, init_scale=2.0 ** 10)
    x, y = plain.train_data.batch(torch.arange(64))
    assert all(torch.equal(a, b) for a, b in zip(params(plain), params(scaled)))
    plain.stepper.train_step(x, y, 0.2)
    _, bad, _ = scaled.stepper.train_step(x, y, 0.2)
    # a power-of-two scale and its inverse are exact: both optimizers see the very same gradients
    assert bad == [] and all(torch.equal(a, b) for a, b in zip(params(plain), params(scaled)))
    assert scaled.acc.scaler.get_scale() == 2.0 ** 10
    assert scaled.sched_net.scheduler.last_epoch == plain.sched_net.scheduler.last_epoch == 1


def test_fp16_overflow_skips_the_step_and_halves_the_scale_once(data, tmp_path):
    _, scaled = fp16_trainers(data, tmp_path, init_scale=2.0 ** 127)  # loss * 2^127 overflows float32
    x, y = scaled.train_data.batch(torch.arange(64))
    before = params(scaled)
    loss, bad, _ = scaled.stepper.train_step(x, y, 0.2)
    assert bad == [] and math.isfinite(loss)  # an overflow is not a divergence
    assert all(torch.equal(a, b) for a, b in zip(before, params(scaled)))  # neither optimizer stepped
    assert scaled.acc.scaler.get_scale() == 2.0 ** 126  # once per step, not once per optimizer
    assert scaled.sched_net.scheduler.last_epoch == 0 and scaled.sched_head.scheduler.last_epoch == 0
