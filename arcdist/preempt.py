"""SLURM preemption: after the checkpoint, put this job (or array task) back in the queue."""
from __future__ import annotations

import os
import subprocess


def slurm_job_id() -> str | None:
    """`ARRAYJOB_TASK` for an array task (what scontrol requeue needs), else the job id; None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_self() -> bool:
    """`scontrol requeue` this job; True when SLURM accepted it."""
    job = slurm_job_id()
    if job is None:
        print("preempted: checkpoint saved; resume with --resume RUN_DIR")
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"preempted: checkpoint saved; scontrol requeue {job}: "
          f"{'ok' if result.returncode == 0 else result.stderr.strip()}")
    return result.returncode == 0
