"""The launch environment in one object: who started this process, and in which scheduler job.

Modelled on Lightning's `ClusterEnvironment`. Two axes, because a Slurm job here runs `accelerate launch` (or
torchrun) inside sbatch, so both kinds of variables are present at once:

- the launcher (`Plain`, `TorchElastic`, `Accelerate`): the process facts (rank, world size, local rank, local
  world size, node rank, elastic restart count, mixed precision) and how a job command is formed; the process
  group is built from its RANK / WORLD_SIZE, so these win over Slurm's own SLURM_PROCID / SLURM_NTASKS;
- the scheduler (`Scheduler` for none, `Slurm`): the job facts (job id, array task, requeue count).

A new launcher or scheduler is one subclass (`detect`, `from_env`, a launcher's `command`) in `LAUNCHERS` or
`SCHEDULERS`. Modules ask `current()`, not `os.environ`; tests build one with `ClusterEnv.from_env(env)`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import ClassVar, Mapping


def _get(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or None  # an empty value means unset (tests and scripts blank variables that way)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_get(env, name) or default)


@dataclass(frozen=True)
class Plain:
    """A process started by hand: rank 0 of 1 unless torch's env:// variables say otherwise (LightningEnvironment)."""
    name: ClassVar[str] = "plain"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    restart_count: int = 0  # times the launcher relaunched the workers (torchrun --max-restarts)
    run_id: str | None = None  # the elastic agent's run id: set when a launcher process watches this one
    mixed_precision: str | None = None

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Plain":
        return cls(**cls._fields(env))

    @classmethod
    def _fields(cls, env: Mapping[str, str]) -> dict:  # what from_env passes: a subclass adds its own
        return dict(rank=_int(env, "RANK", 0), world_size=_int(env, "WORLD_SIZE", 1),
                    local_rank=_int(env, "LOCAL_RANK", 0), local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1),
                    node_rank=_int(env, "GROUP_RANK", 0))

    @classmethod
    def command(cls, script: str, args: list[str], processes: int = 1, port: int | None = None) -> list[str]:
        """The command that runs `script args` as `processes` ranks on this machine (one for a plain process)."""
        return [sys.executable, script, *args]


@dataclass(frozen=True)
class TorchElastic(Plain):
    """torchrun (torch.distributed.run): its elastic agent starts the ranks and may relaunch them."""
    name: ClassVar[str] = "torchelastic"

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return any(_get(env, k) for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))

    @classmethod
    def _fields(cls, env: Mapping[str, str]) -> dict:
        return dict(super()._fields(env), restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
                    run_id=_get(env, "TORCHELASTIC_RUN_ID"))

    @classmethod
    def command(cls, script: str, args: list[str], processes: int = 1, port: int | None = None) -> list[str]:
        port_args = ["--master_port", str(port)] if port is not None else []
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *port_args, script,
                *args]


@dataclass(frozen=True)
class Accelerate(TorchElastic):
    """`accelerate launch`: it always exports ACCELERATE_MIXED_PRECISION; with --multi_gpu it runs torch's
    elastic agent, so the rank facts (and a relaunch) are torchrun's."""
    name: ClassVar[str] = "accelerate"

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return _get(env, "ACCELERATE_MIXED_PRECISION") is not None

    @classmethod
    def _fields(cls, env: Mapping[str, str]) -> dict:
        return dict(super()._fields(env), mixed_precision=_get(env, "ACCELERATE_MIXED_PRECISION"))

    @classmethod
    def command(cls, script: str, args: list[str], processes: int = 1, port: int | None = None) -> list[str]:
        port_args = ["--main_process_port", str(port)] if port is not None else []
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                *port_args, script, *args]


@dataclass(frozen=True)
class Scheduler:
    """No batch scheduler: no job to requeue."""
    name: ClassVar[str] = "none"
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    restart_count: int = 0  # times the scheduler requeued the job (not torchrun's relaunches)

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Scheduler":
        return cls()

    @property
    def requeue_id(self) -> str | None:
        """What the scheduler's requeue command takes: `ARRAYJOB_TASK` for an array task, else the job id."""
        if self.array_job_id and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id


@dataclass(frozen=True)
class Slurm(Scheduler):
    """A Slurm job (sbatch, srun). SLURM_PROCID and friends describe srun's tasks, not the ranks: kept as job facts."""
    name: ClassVar[str] = "slurm"
    proc_id: int = 0
    node_id: int = 0
    num_nodes: int = 1

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return any(_get(env, k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Slurm":
        task = _get(env, "SLURM_ARRAY_TASK_ID")
        return cls(job_id=_get(env, "SLURM_JOB_ID"), array_job_id=_get(env, "SLURM_ARRAY_JOB_ID"),
                   array_task_id=int(task) if task is not None else None,
                   restart_count=_int(env, "SLURM_RESTART_COUNT", 0), proc_id=_int(env, "SLURM_PROCID", 0),
                   node_id=_int(env, "SLURM_NODEID", 0), num_nodes=_int(env, "SLURM_NNODES", 1))


LAUNCHERS: tuple[type[Plain], ...] = (Accelerate, TorchElastic, Plain)  # the first that detects itself wins
SCHEDULERS: tuple[type[Scheduler], ...] = (Slurm, Scheduler)


@dataclass(frozen=True)
class ClusterEnv:
    """This process's launcher, scheduler and visible GPUs; the properties are the launcher's process facts, and
    the job's are the scheduler's (`env.scheduler.requeue_id`)."""
    launcher: Plain = Plain()
    scheduler: Scheduler = Scheduler()
    # CUDA_VISIBLE_DEVICES as given: indices, GPU-<uuid> or MIG-<uuid> names; None when unset (all GPUs)
    visible_devices: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ClusterEnv":
        launcher = next(c for c in LAUNCHERS if c.detect(env)).from_env(env)
        scheduler = next(c for c in SCHEDULERS if c.detect(env)).from_env(env)
        visible = env.get("CUDA_VISIBLE_DEVICES")  # here "" is not unset: it hides every GPU
        devices = None if visible is None else tuple(i.strip() for i in visible.split(",") if i.strip())
        return cls(launcher, scheduler, devices)

    @property
    def rank(self) -> int:
        return self.launcher.rank

    @property
    def world_size(self) -> int:
        return self.launcher.world_size

    @property
    def restart_count(self) -> int:
        """torchrun's relaunches of the workers (the scheduler's requeues are `scheduler.restart_count`)."""
        return self.launcher.restart_count

    @property
    def multi_process(self) -> bool:
        """Whether this process is one rank of several."""
        return self.world_size >= 2


def current() -> ClusterEnv:
    """This process's environment, read now: not cached, as accelerate and tests change os.environ after import."""
    return ClusterEnv.from_env(os.environ)


def job_command(script: str, args: list[str], processes: int = 1, port: int | None = None,
                launcher: type[Plain] = Accelerate) -> list[str]:
    """A job's command: a plain process for one rank, else `launcher` starting `processes` ranks on `port`."""
    if processes > 1 and port is not None:
        return launcher.command(script, args, processes, port)
    return Plain.command(script, args)
