"""The launch environment (arcdist.cluster): each launcher and scheduler from an explicit env dict, precedence."""
from __future__ import annotations

import dataclasses
import sys
from typing import Mapping

import pytest

from arcdist import cluster, errors, preempt, rundir
from arcdist.cluster import Accelerate, ClusterEnv, Plain, Scheduler, Slurm, TorchElastic
from helpers import rank_env

TORCHRUN = dict(TORCHELASTIC_RUN_ID="run-7", TORCHELASTIC_RESTART_COUNT="2", RANK="5", WORLD_SIZE="8",
                LOCAL_RANK="1", LOCAL_WORLD_SIZE="4", GROUP_RANK="1", GROUP_WORLD_SIZE="2")
SLURM = dict(SLURM_JOB_ID="4242", SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_NODEID="1", SLURM_NNODES="2",
             SLURM_RESTART_COUNT="3")


def test_a_plain_process_is_rank_0_of_1_outside_any_scheduler():
    env = ClusterEnv.from_env({"HOME": "/root"})
    assert type(env.launcher) is Plain and type(env.scheduler) is Scheduler
    assert (env.rank, env.world_size, env.launcher.local_rank, env.launcher.local_world_size,
            env.launcher.node_rank, env.restart_count) == (0, 1, 0, 1, 0, 0)
    assert env.launcher.run_id is None and env.launcher.mixed_precision is None and not env.multi_process
    assert env.scheduler.job_id is None and env.scheduler.array_task_id is None and env.scheduler.requeue_id is None
    assert env.visible_devices is None and env == ClusterEnv()


def test_torchrun_gives_the_ranks_and_its_relaunch_count():
    env = ClusterEnv.from_env(TORCHRUN)
    assert env.launcher == TorchElastic(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1,
                                        restart_count=2, run_id="run-7")
    assert env.multi_process and env.restart_count == 2 and env.scheduler == Scheduler()


def test_accelerate_single_process_and_multi_gpu():
    single = ClusterEnv.from_env(dict(ACCELERATE_MIXED_PRECISION="bf16"))
    assert single.launcher == Accelerate(mixed_precision="bf16") and single.world_size == 1
    assert single.launcher.run_id is None  # no elastic agent: nothing to die with
    multi = ClusterEnv.from_env(dict(TORCHRUN, ACCELERATE_MIXED_PRECISION="no"))
    assert multi.launcher == Accelerate(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1,
                                        restart_count=2, run_id="run-7", mixed_precision="no")


def test_the_suites_stand_in_for_accelerate_launch_is_accelerate():
    env = ClusterEnv.from_env(rank_env({}, rank=1, world=2, port=1234))
    assert type(env.launcher) is Accelerate and (env.rank, env.world_size, env.launcher.local_rank) == (1, 2, 1)
    assert env.launcher.local_world_size == 2 and env.launcher.run_id is None and env.multi_process


def test_slurm_job_and_array_task():
    job = ClusterEnv.from_env(SLURM)
    assert type(job.launcher) is Plain and job.rank == 0 and job.world_size == 1
    assert job.scheduler == Slurm(job_id="4242", restart_count=3, proc_id=1, node_id=1, num_nodes=2)
    assert job.scheduler.requeue_id == "4242" and job.restart_count == 0  # requeues are not relaunches
    task = ClusterEnv.from_env(dict(SLURM_JOB_ID="103", SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="3"))
    assert (task.scheduler.job_id, task.scheduler.array_job_id, task.scheduler.array_task_id) == ("103", "100", 3)
    assert task.scheduler.requeue_id == "100_3"  # what scontrol requeue needs for an array task
    assert ClusterEnv.from_env(dict(SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="0")).scheduler.requeue_id == "100_0"


def test_torchrun_inside_slurm_ranks_from_the_launcher_job_from_the_scheduler():
    env = ClusterEnv.from_env(dict(SLURM, **TORCHRUN, ACCELERATE_MIXED_PRECISION="fp16"))
    assert type(env.launcher) is Accelerate and type(env.scheduler) is Slurm
    assert (env.rank, env.world_size, env.launcher.node_rank) == (5, 8, 1)  # not SLURM_PROCID / SLURM_NTASKS
    assert env.restart_count == 2 and env.scheduler.restart_count == 3
    assert env.scheduler.proc_id == 1 and env.scheduler.requeue_id == "4242"


def test_blank_variables_are_unset_but_a_blank_gpu_list_hides_every_gpu():
    blank = {k: "" for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID",
                             "ACCELERATE_MIXED_PRECISION", "RANK", "WORLD_SIZE")}
    env = ClusterEnv.from_env(dict(blank, CUDA_VISIBLE_DEVICES=""))
    assert type(env.launcher) is Plain and type(env.scheduler) is Scheduler and env.world_size == 1
    assert env.visible_devices == ()
    assert ClusterEnv.from_env(dict(CUDA_VISIBLE_DEVICES="0, 2,GPU-x")).visible_devices == ("0", "2", "GPU-x")
    mig = "MIG-9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0,MIG-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
    assert ClusterEnv.from_env(dict(CUDA_VISIBLE_DEVICES=mig)).visible_devices == tuple(mig.split(","))


def test_the_env_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClusterEnv().launcher.rank = 1


def test_the_modules_read_the_launch_environment_now(monkeypatch):
    for name in (*TORCHRUN, *SLURM, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    assert not errors.multi_process() and not rundir.elastic_restart() and preempt.slurm_job_id() is None
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "9")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert cluster.current().world_size == 3 and errors.multi_process() and rundir.elastic_restart()
    assert preempt.slurm_job_id() == "9_4"


def test_job_commands():
    assert cluster.job_command("t.py", ["--x"]) == [sys.executable, "t.py", "--x"]
    assert cluster.job_command("t.py", ["--x"], processes=2) == [sys.executable, "t.py", "--x"]  # no port: plain
    assert cluster.job_command("t.py", ["--x"], processes=2, port=29500) == [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--main_process_port", "29500", "t.py", "--x"]
    assert cluster.job_command("t.py", [], processes=4, port=1, launcher=TorchElastic) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port", "1", "t.py"]


def test_the_grid_forms_a_multi_gpu_job_with_accelerate(tmp_path):
    from arcdist.grid import TRAIN_SCRIPT, build_jobs, parse_args, train_command

    args = parse_args(["--grid-id", "g", "--variants", "V2", "--out", str(tmp_path), "--gpus-per-job", "2"])
    cmd = train_command(build_jobs(args)[0], args, port=29600)
    assert cmd[:8] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--main_process_port", "29600"] and cmd[8] == str(TRAIN_SCRIPT) and cmd[9] == "--variant"


def test_a_new_scheduler_is_one_subclass(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Pbs(Scheduler):
        name = "pbs"

        @classmethod
        def detect(cls, env: Mapping[str, str]) -> bool:
            return "PBS_JOBID" in env

        @classmethod
        def from_env(cls, env: Mapping[str, str]) -> "Pbs":
            return cls(job_id=env["PBS_JOBID"])

    monkeypatch.setattr(cluster, "SCHEDULERS", (Pbs, *cluster.SCHEDULERS))
    env = ClusterEnv.from_env(dict(PBS_JOBID="77.server", **TORCHRUN))
    assert type(env.scheduler) is Pbs and env.scheduler.requeue_id == "77.server" and env.rank == 5
