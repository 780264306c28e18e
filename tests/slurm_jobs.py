"""Slurm commands and job waits shared by the cluster tests (test_slurm: one node; test_multinode: two)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from helpers import cli_env


def job_env(**extra) -> dict:
    """What a submitted job gets (sbatch --export=ALL passes the submitter's environment): this interpreter as
    PYTHON, this checkout, no W&B, and `extra`."""
    return cli_env(PYTHON=sys.executable, **extra)


class SlurmJobs:
    """One cluster's commands: `default_env()` is the environment they (and the jobs they submit) get unless a
    call passes its own; None inherits this process's."""

    def __init__(self, default_env: Callable[[], dict] | None = None):
        self.default_env = default_env

    def sh(self, *cmd, check=True, timeout=60, env=None, **kw) -> subprocess.CompletedProcess:
        env = env or (self.default_env() if self.default_env else None)
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    # the states tests/infra/dev-cluster.sh waits for before it calls a node up (sinfo's %T, '*' = not responding yet)
    READY = ("idle", "mixed", "allocated", "completing")

    def node_states(self, timeout: float = 60) -> dict[str, str]:
        """Each node's state (sinfo %T), polled until every node is ready to take a job or `timeout` passes: a node
        that slurmd just registered can show another state for a moment (the cluster's `up` resumes down ones)."""
        deadline = time.time() + timeout
        while True:
            out = self.sh("sinfo", "-h", "-N", "-o", "%N %T").stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if (states and all(s.startswith(self.READY) for s in states.values())) or time.time() > deadline:
                return states
            time.sleep(0.5)

    def in_queue(self, job: str) -> bool:
        return bool(self.sh("squeue", "-h", "-j", job, check=False).stdout.strip())

    def cancel(self, job: str) -> None:
        """End a job that a failed test leaves behind: SIGKILL first (a plain scancel's SIGTERM is taken as a
        preemption: the job would checkpoint and requeue itself), then cancel."""
        self.sh("scancel", "--full", "--signal=KILL", job, check=False)
        self.sh("scancel", job, check=False)

    def wait_gone(self, job: str, logs: list[Path], timeout: float) -> float:
        """Poll squeue until `job` (all its array tasks) has left the queue; returns the seconds waited."""
        start = time.time()
        while time.time() < start + timeout:
            if not self.in_queue(job):
                return time.time() - start
            time.sleep(0.25)
        info = self.sh("scontrol", "show", "job", job, check=False).stdout
        self.cancel(job)
        text = "\n".join(f"--- {p}\n{p.read_text() if p.exists() else '(missing)'}" for p in logs)
        raise AssertionError(f"job {job} still queued after {timeout:.0f} s\n{info}\n{text}")

    def wait_for(self, path: Path, job: str, log: Path, timeout: float = 120) -> None:
        """Wait until `path` exists while `job` is queued (cancelled and the log shown when it never does)."""
        deadline = time.time() + timeout
        while not path.exists():
            if time.time() > deadline or not self.in_queue(job):
                self.cancel(job)
                raise AssertionError(f"{path} did not appear\n{log.read_text() if log.exists() else '(no log)'}")
            time.sleep(0.1)

    def job_state(self, job: str) -> tuple[str, str]:
        info = self.sh("scontrol", "show", "job", job).stdout
        return re.search(r"JobState=(\S+)", info).group(1), re.search(r"\bExitCode=(\S+)", info).group(1)

    def usr1_while_paused(self, job: str, run: Path, log: Path, timeout: float = 240) -> str:
        """What SLURM does 90 s before a time limit (--signal=B:USR1@90), sent to the batch shell only while the
        job's rank 0 waits at its ARCDIST_FAULT_PAUSE step (mid-epoch by construction); then release it and wait
        for the job (its requeued attempt included) to leave the queue. Returns the log's text."""
        self.wait_for(run / "FAULT-PAUSED", job, log)
        self.sh("scancel", "--signal=USR1", "--batch", job)
        self.wait_for(run / "PREEMPT", job, log, timeout=30)  # the trap's stop file
        (run / "FAULT-PAUSED").unlink()
        self.wait_gone(job, [log], timeout=timeout)
        return log.read_text()
