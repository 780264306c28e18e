"""Stopping a run early and coming back: signals, the stop file, SLURM requeue, Ctrl-C.

- SIGUSR1 / SIGTERM (SLURM sends them before a time limit or a preemption) and a `RUN_DIR/PREEMPT` file (a batch
  script's trap creates it, reaching every launcher topology) ask for a stop at the next step boundary; all ranks
  agree on it, a mid-epoch checkpoint is written, and the job puts itself back in the queue (`requeue_self`).
- SIGINT (Ctrl-C): the first one stops the same way, without a requeue, prints the resume command, and the
  process exits with status 130; a second one exits at once (status 130), the last complete checkpoint intact.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from arcdist import cluster
from arcdist.errors import Exit

STOP_FILE = "PREEMPT"
PROCESS_START = time.time()
_flags = dict(stop=False, interrupts=0)
PARTIAL: set[Path] = set()  # folders being written (checkpoints): removed when a second Ctrl-C quits


def _on_stop_signal(signum, frame) -> None:
    _flags["stop"] = True


def _on_interrupt(signum, frame) -> None:
    _flags["interrupts"] += 1
    _flags["stop"] = True
    if _flags["interrupts"] == 1:
        print("\narcdist: Ctrl-C: stopping at the next step with a checkpoint (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)
        return
    print("arcdist: Ctrl-C again: quitting now; the last complete checkpoint is kept", file=sys.stderr, flush=True)
    for path in list(PARTIAL):
        shutil.rmtree(path, ignore_errors=True)
    os._exit(Exit.INTERRUPTED)


def install_handlers() -> None:
    """Installed first thing, so a signal during start-up is kept for the first step, not fatal."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_interrupt)


def die_with_launcher() -> None:
    """A rank started by torch elastic (accelerate launch --multi_gpu, torchrun) is SIGKILLed by the kernel when its
    launcher dies (PR_SET_PDEATHSIG; Linux). Without it, ranks whose launcher was killed stay orphaned: before the
    process group exists they wait on the launcher's TCP store until its timeout, holding the run folder's lock,
    so a rerun finds the run busy. Killed, they lose at most the work since the last checkpoint, which a rerun
    resumes."""
    if cluster.current().launcher.run_id is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call: do as the kernel would have done
        os.kill(os.getpid(), signal.SIGKILL)


def request_stop(stop: bool = True) -> None:
    """Ask this process to stop at the next step, as a stop signal does (False withdraws the request)."""
    _flags["stop"] = stop


def requested() -> bool:
    """A stop signal (or Ctrl-C) arrived in this process."""
    return _flags["stop"]


def interrupted() -> bool:
    return _flags["interrupts"] > 0


def stop_file(run_dir: Path) -> Path:
    return Path(run_dir) / STOP_FILE


def clear_stale_stop_file(run_dir: Path) -> None:
    """A stop file older than this process is from before a requeue: it has been acted on."""
    path = stop_file(run_dir)
    if path.exists() and path.stat().st_mtime < PROCESS_START:
        path.unlink()


def slurm_job_id() -> str | None:
    """`ARRAYJOB_TASK` for an array task (what scontrol requeue needs), else the job id; None outside SLURM."""
    return cluster.current().scheduler.requeue_id


def requeue_self(run_dir: Path) -> bool:
    """`scontrol requeue` this job; True when SLURM accepted it. Outside SLURM: how to resume `run_dir`."""
    job = slurm_job_id()
    if job is None:
        print(f"preempted: checkpoint saved; resume with --resume {run_dir}")
        return False
    # the requeue SIGTERMs every process of the job, scontrol included, sometimes before scontrol has read SLURM's
    # answer: it ignores TERM (inherited through exec) so that the answer printed below is SLURM's, not a race's
    result = subprocess.run(["sh", "-c", 'trap "" TERM; exec scontrol requeue "$1"', "sh", job],
                            capture_output=True, text=True)
    error = result.stderr.strip() or f"exit status {result.returncode}"
    print(f"preempted: checkpoint saved; scontrol requeue {job}: {'ok' if result.returncode == 0 else error}")
    return result.returncode == 0


def resume_command(run_dir: Path) -> str:
    """The command that continues `run_dir`, in the form this process was started by: the `arcdist` command (or
    `python -m arcdist`), else python and the script."""
    if Path(sys.argv[0]).name in ("arcdist", "__main__.py"):
        return f"arcdist train --resume {run_dir}"
    return f"{Path(sys.executable).name} {sys.argv[0]} --resume {run_dir}"


def after_stop(run_dir: Path, state: dict) -> int:
    """What a stopped run does last: requeue itself (signals, stop file) or print how to resume (Ctrl-C).

    Returns the process's exit status.
    """
    if interrupted():
        print(f"interrupted: checkpoint saved at epoch {state['epoch'] + 1}, step {state['step']}; resume with:\n"
              f"  {resume_command(run_dir)}", flush=True)
        return Exit.INTERRUPTED
    requeue_self(run_dir)
    return Exit.OK


@contextmanager
def forwarding_interrupts(on_interrupt: Callable[[int], None]) -> Iterator[None]:
    """While inside, each Ctrl-C (SIGINT) calls `on_interrupt(count)` instead of raising (the grid runner passes
    it on to its jobs, which run in their own sessions); the previous handler is restored after."""
    count = [0]

    def handler(signum, frame) -> None:
        count[0] += 1
        on_interrupt(count[0])

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
