"""Test-only fault injection, read once from the environment when a Trainer is built.

ARCDIST_FAULT_NAN="EPOCH:STEP" (1-based epoch, 0-based step) makes that step's loss NaN once (not after a rollback).
ARCDIST_FAULT_KILL="EPOCH:STEP" makes rank 1 die by SIGKILL before that step, in the first incarnation only
(TORCHELASTIC_RESTART_COUNT=0), so that torchrun's relaunch trains on.
ARCDIST_FAULT_PAUSE="EPOCH:STEP" makes rank 0 create RUN_DIR/FAULT-PAUSED before that step and wait until the
file is removed (the other ranks wait in the step's all-reduce), in a new run only (not after a resume or
relaunch): a test signals or kills a job there, mid-epoch, with no timing luck.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from arcdist import rundir

PAUSE_FILE = "FAULT-PAUSED"


@dataclass(frozen=True)
class Faults:
    nan_at: tuple[int, int] | None = None
    kill_at: tuple[int, int] | None = None
    pause_at: tuple[int, int] | None = None

    @classmethod
    def from_env(cls) -> "Faults":
        def at(name: str) -> tuple[int, int] | None:
            value = os.environ.get(name)
            return tuple(int(v) for v in value.split(":")) if value else None

        first = not rundir.elastic_restart()
        return cls(nan_at=at("ARCDIST_FAULT_NAN"), kill_at=at("ARCDIST_FAULT_KILL") if first else None,
                   pause_at=at("ARCDIST_FAULT_PAUSE") if first else None)

    def before_step(self, run_dir: Path, rank: int, resumed: bool, epoch: int, step: int) -> None:
        """At `pause_at` rank 0 of a new run waits; at `kill_at` rank 1 dies (epoch 1-based)."""
        if self.pause_at == (epoch, step) and rank == 0 and not resumed:
            path = Path(run_dir) / PAUSE_FILE
            path.write_text(f"epoch {epoch} step {step} pid {os.getpid()}\n")
            print(f"arcdist: fault: paused at epoch {epoch}, step {step} until {path} is removed", flush=True)
            while path.exists():
                time.sleep(0.1)
        if self.kill_at == (epoch, step) and rank == 1:
            print(f"arcdist: fault: rank 1 killed at epoch {epoch}, step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def poisons(self, epoch: int, step: int, rollbacks: int) -> bool:
        """This step's loss is to be made NaN (epoch 1-based; once: not after a rollback)."""
        return self.nan_at == (epoch, step) and rollbacks == 0
