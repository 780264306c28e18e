"""Atomic checkpoints around `accelerator.save_state` / `load_state`.

A checkpoint is `RUN/checkpoints/epoch-NNNN/`: Accelerate's state (both models as safetensors, both
optimizers, the scheduler, RNG states, grad scaler) plus `trainer.json` (epoch, best metrics, W&B id).
It is written to a hidden temporary folder and renamed into place only once complete, so a crash
mid-write never leaves a checkpoint that resume would choose. The newest K are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from arcdist.config import ConfigError, first_line

TRAINER_FILE = "trainer.json"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used for resume."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones are hidden `.tmp-*` folders and never listed)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("epoch-*") if (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, run_dir: str | os.PathLike, epoch: int, trainer_state: dict,
                    keep: int) -> Path:
    """Save the full training state after `epoch` (1-based count of finished epochs); all ranks call this."""
    root = checkpoint_dir(run_dir)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".tmp-epoch-{epoch:04d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # trainer.json is written last: its presence marks the folder complete
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore the state saved in `path`; returns its trainer state. Tensors load with weights_only=True."""
    try:
        state = json.loads((path / TRAINER_FILE).read_text())
        accelerator.load_state(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        raise CheckpointError(f"checkpoint {path} is unreadable ({first_line(e)}); delete that folder to resume from the one "
                              "before, or start a new run") from None
    return state
