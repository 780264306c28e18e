"""SLURM and launcher scripts, for real: a one-node Slurm cluster (tests/infra/dev-cluster.sh) runs the grid
as a job array, a preempted task checkpoints, requeues itself and resumes to the uninterrupted result;
accelerate's CPU config and launch/torchrun.sh start 2 ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import metric_rows, summary, ROOT, cli_env, free_port, make_tiny_mnist
from slurm_jobs import SlurmJobs, job_env

pytestmark = pytest.mark.cluster


CLUSTER = ROOT / "tests" / "infra" / "dev-cluster.sh"

SLURM = SlurmJobs()  # the one-node cluster: this process's environment
sh, wait_gone, wait_for, job_state = SLURM.sh, SLURM.wait_gone, SLURM.wait_for, SLURM.job_state


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster, started here (and stopped again if it was not running before)."""
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root (tests/infra/dev-cluster.sh installs and starts slurmctld/slurmd)")
    was_up = sh(CLUSTER, "status", check=False).returncode == 0
    up = sh(CLUSTER, "up", check=False, timeout=600)
    if up.returncode == 3:  # not root, no apt-get, or apt-get failed
        pytest.skip(f"Slurm cannot be installed here: {up.stderr.strip()}")
    assert up.returncode == 0, f"tests/infra/dev-cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
    yield
    if not was_up:
        sh(CLUSTER, "down", check=False, timeout=120)


def sbatch(script: str, *options: str, env: dict) -> str:
    out = sh("sbatch", "--parsable", f"--chdir={ROOT}", *options, ROOT / "slurm" / script, env=env).stdout
    return out.strip().split(";")[0]


def world_size(run_dir: Path) -> int:
    return json.loads((run_dir / "config.json").read_text())["world_size"]


def test_grid_array_runs_every_task(cluster, tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=64, n_test=20)
    env = job_env(GRID_ID="arr", VARIANTS="T0,T0.1", EPOCHS="1", DATA_DIR=str(data), OUT=str(tmp_path / "runs"),
                  EXTRA="--wandb disabled --set data.batch_size=32 --set train.retrieval=false", TRAIN_ARGS="--plot-every 0", ARCDIST_CPU="1")
    # CPU cluster: the script's `#SBATCH --gres=gpu:1` is overridden by --gres=none
    job = sbatch("grid.sbatch", "--array=0-1", "--gres=none", "--cpus-per-task=1", "--mem=2G",
                 f"--output={tmp_path}/%x-%A_%a.out", env=env)
    logs = [tmp_path / f"arcdist-grid-{job}_{i}.out" for i in (0, 1)]
    wait_gone(job, logs, timeout=240)
    for i, variant in enumerate(("T0", "T0.1")):
        run, log = tmp_path / "runs" / "arr" / f"{variant}-s0", logs[i].read_text()
        assert job_state(f"{job}_{i}") == ("COMPLETED", "0:0"), log
        assert summary(run)["status"] == "finished", log
        assert [r["epoch"] for r in metric_rows(run)] == [1]
        assert "restart count 0" in log and f"task {i} -> {run}" in log
        assert not (run / "PREEMPT").exists()


def test_preempted_task_requeues_and_resumes_to_the_same_result(cluster, tmp_path):
    """About 30 s: Slurm's requeue and a second incarnation of the task (its shell, the grid runner, a run)."""
    data = make_tiny_mnist(tmp_path / "data", n_train=384, n_test=50)
    train = ["--plot-every", "0", "--cpu", "--set", "train.threads=1", "--set", "train.retrieval=false"]
    # the uninterrupted reference runs beside the SLURM job
    reference = tmp_path / "reference"
    ref_cmd = [sys.executable, str(ROOT / "arcdist" / "train.py"), "--variant", "T0", "--seed", "0", "--epochs", "2",
               "--set", "data.batch_size=32", "--data-dir", str(data), "--output-dir", str(reference),
               "--wandb", "disabled", "--no-progress", *train]
    ref = subprocess.Popen(ref_cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # the first incarnation waits before epoch 1's step 3 while FAULT-PAUSED exists: the signal lands mid-epoch
    env = job_env(GRID_ID="pre", VARIANTS="T0", EPOCHS="2", DATA_DIR=str(data), OUT=str(tmp_path / "runs"),
                  EXTRA="--wandb disabled --set data.batch_size=32 --set train.retrieval=false", TRAIN_ARGS="--plot-every 0", ARCDIST_CPU="1",
                  ARCDIST_FAULT_PAUSE="1:3")
    job = sbatch("grid.sbatch", "--array=0", "--gres=none", "--cpus-per-task=1", "--mem=2G",
                 f"--output={tmp_path}/%x-%A_%a.out", env=env)
    task, run = f"{job}_0", tmp_path / "runs" / "pre" / "T0-s0"
    log = tmp_path / f"arcdist-grid-{task}.out"
    text = SLURM.usr1_while_paused(task, run, log)
    assert "got SIGUSR1" in text, text
    assert f"scontrol requeue {task}: ok" in text, text
    assert "restart count 1" in text and f"--resume {run}" in text, text
    assert job_state(task) == ("COMPLETED", "0:0"), text
    assert summary(run)["status"] == "finished" and not (run / "PREEMPT").exists()
    assert "fault: paused at epoch 1, step 3" in text, text  # the signal did land mid-epoch

    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    assert metric_rows(run) == metric_rows(reference)
    assert [r["epoch"] for r in metric_rows(run)] == [1, 2]


def test_accelerate_cpu_config_and_torchrun_start_two_ranks(tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=64, n_test=20)
    common = ["--variant", "T0", "--epochs", "1", "--data-dir", str(data), "--set", "data.batch_size=32",
              "--wandb", "disabled", "--no-progress", "--plot-every", "0", "--set", "train.threads=1"]
    env = job_env(NPROC="2", PORT=str(free_port()))
    procs = {
        "accelerate": subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             str(ROOT / "launch" / "accelerate" / "cpu_ddp.yaml"), str(ROOT / "arcdist" / "train.py"), *common,
             "--output-dir", str(tmp_path / "accelerate")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "torchrun": subprocess.Popen(
            [str(ROOT / "launch" / "torchrun.sh"), *common, "--output-dir", str(tmp_path / "torchrun")],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{out[-4000:]}"
        assert world_size(tmp_path / name) == 2, name
        assert summary(tmp_path / name)["status"] == "finished", name

