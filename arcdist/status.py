"""The statuses of a run and of a grid's job: one spelling, read and written by every module.

A `RunStatus` is a `str`: it is written to trainer.json, summary.json, metrics.jsonl and grid.json as its value
("finished", ...), and a value read back from those files compares equal to it.
"""
from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    # a run's (trainer.json, summary.json); the first four are also a grid job's
    RUNNING = "running"
    FINISHED = "finished"
    PREEMPTED = "preempted"  # stopped with a checkpoint (signal, stop file, Ctrl-C): --resume continues it
    DIVERGED = "diverged"  # a non-finite loss, feature or gradient; the run ended there
    # a grid job's only (grid.json)
    PENDING = "pending"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C reached the grid runner: the job stopped with a checkpoint
    SKIPPED = "skipped"  # finished in an earlier pass of the grid
    BUSY = "busy"  # another process owns its run folder

    def __str__(self) -> str:
        return self.value


ENDED = (RunStatus.FINISHED, RunStatus.DIVERGED)  # a run with nothing left to train (summary.json)
