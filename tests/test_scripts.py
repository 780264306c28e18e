"""The launch scripts without a cluster: each parses, and each sbatch script's DRY_RUN=1 prints the command a job
would run (rendered from the environment Slurm gives it), so a change to a script is checked in the fast subset."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT, cli_env
from slurm_jobs import SlurmJobs, job_env

SCRIPTS = [ROOT / "tests" / "infra" / "dev-cluster.sh", ROOT / "slurm" / "grid.sbatch", ROOT / "slurm" / "multinode.sbatch",
           ROOT / "launch" / "torchrun.sh", ROOT / "launch" / "grid.sh", ROOT / ".ci" / "system-deps",
           ROOT / "bench" / "gpu-smoke.sh"]
sh = SlurmJobs().sh


def test_scripts_parse():
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        sh("bash", "-n", script)


def test_multinode_renders_one_launch_per_node(tmp_path):
    env = job_env(DRY_RUN="1", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID="4242",
                  GPUS_PER_NODE="4", VARIANT="V1", EPOCHS="3", RUN_DIR=str(tmp_path / "mn"),
                  TRAIN_ARGS="--mixed-precision bf16")
    out = sh("bash", ROOT / "slurm" / "multinode.sbatch", env=env, cwd=ROOT).stdout
    cmd = out.strip().splitlines()[-1]
    assert cmd.startswith("srun --nodes=2 --ntasks-per-node=1 ")
    assert "bash -c '" in cmd
    launch = cmd.split("bash -c '", 1)[1].rstrip("'")
    for part in ("-m accelerate.commands.launch --multi_gpu", "--num_machines 2", "--num_processes 8",
                 "--machine_rank $SLURM_NODEID", "--main_process_ip gpu07", "--main_process_port 29742",
                 "--rdzv_backend c10d", f"arcdist/train.py --variant V1 --seed 0 --output-dir {tmp_path / 'mn'}",
                 "--epochs 3", "--mixed-precision bf16"):
        assert part in launch, (part, launch)
    # a started run folder (config.json) is resumed, not restarted, with or without a checkpoint: train.py
    # continues the checkpoint, or trains a run that died before its first one again from epoch 1
    (tmp_path / "mn").mkdir()
    (tmp_path / "mn" / "config.json").write_text("{}")
    out = sh("bash", ROOT / "slurm" / "multinode.sbatch", env=env, cwd=ROOT).stdout
    launch = out.strip().splitlines()[-1]
    assert f"arcdist/train.py --resume {tmp_path / 'mn'} --epochs 3" in launch and "--variant" not in launch


def test_grid_array_task_renders_its_run_folder_and_grid_command(tmp_path):
    """DRY_RUN: the command array task 3 would run (without a cluster): its grid, this task, the CPU's threads,
    and --datasets only when DATASETS is set (each variant's own dataset otherwise)."""
    env = job_env(DRY_RUN="1", SLURM_ARRAY_TASK_ID="3", GRID_ID="g", VARIANTS="V2,V2.1", SEEDS="0,1",
                  OUT=str(tmp_path / "runs"), ARCDIST_CPU="1", SLURM_CPUS_PER_TASK="3", TRAIN_ARGS="--plot-every 0")
    lines = sh("bash", ROOT / "slurm" / "grid.sbatch", env=env, cwd=ROOT).stdout.strip().splitlines()
    assert lines[-2].endswith(f"task 3 -> {tmp_path / 'runs' / 'g' / 'V2.1-s1'}"), lines
    assert shlex.split(lines[-1]) == [sys.executable, "-m", "arcdist.grid", "--grid-id", "g", "--seeds", "0,1",
                                      "--out", str(tmp_path / "runs"), "--variants", "V2,V2.1", "--task-index", "3",
                                      "--", "--plot-every", "0", "--cpu", "--set", "train.threads=3"]
    env.update(DATASETS="fashion-mnist", SLURM_ARRAY_TASK_ID="0")
    lines = sh("bash", ROOT / "slurm" / "grid.sbatch", env=env, cwd=ROOT).stdout.strip().splitlines()
    assert "--datasets fashion-mnist" in lines[-1] and lines[-2].endswith(f"task 0 -> {tmp_path / 'runs' / 'g' / 'V2-s0'}")
    env.update(SLURM_ARRAY_TASK_ID="4")  # past the grid's 4 jobs: nothing to do, exit 0
    assert "the grid has only 4 jobs; nothing to do" in sh("bash", ROOT / "slurm" / "grid.sbatch", env=env, cwd=ROOT).stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_gpu_smoke_dry_run_on_the_cpu(tmp_path, real_data):
    """bench/gpu-smoke.sh with TINY=1: every step runs on a CPU (the gpu tests are collected and skipped)."""
    import xml.etree.ElementTree as ET

    out = tmp_path / "smoke"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu-smoke.sh")], cwd=ROOT, capture_output=True, text=True,
                          env=cli_env(TINY="1", OUT=str(out), PYTHON=sys.executable, ARCDIST_DATA_DIR=str(real_data)),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite = ET.parse(out / "gpu-tests.xml").getroot().find("testsuite")
    assert (int(suite.get("tests")), int(suite.get("skipped")), int(suite.get("failures"))) == (6, 6, 0)
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    log = (out / "smoke.log").read_text()
    assert "== " in log and "main command:" in log and "done (status 0)" in log


@pytest.mark.parametrize("script, args, says", [
    ("throughput.py", ["--modes", "bogus"], "--modes: bogus unknown; the modes are post, arcdist, bare, ddp2"),
    ("throughput.py", ["--modes", "bare", "--set", "head.margin"], "expected SECTION.FIELD=VALUE"),
    ("cpu_step.py", ["--steps", "0"], "--steps 0 --rounds 5: expected 1 or more of each")])
def test_the_benches_refuse_bad_arguments_in_one_line(script, args, says):
    """They printed tracebacks (a KeyError for an unknown mode, a ZeroDivisionError for 0 steps)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
