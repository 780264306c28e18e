"""Atomic checkpoints around `accelerator.save_state` / `load_state`.

A checkpoint is `RUN/checkpoints/epoch-NNNN/`: Accelerate's state (both models as safetensors, both
optimizers, the scheduler, RNG states, grad scaler) plus `trainer.json` (epoch, best metrics, W&B id).
It is written to a hidden temporary folder and renamed into place only once complete, so a crash
mid-write never leaves a checkpoint that resume would choose. The newest K are kept.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors import SafetensorError

from arcdist import preempt
from arcdist.config import ConfigError, first_line

TRAINER_FILE = "trainer.json"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used for resume."""


class WriteError(Exception):
    """The run folder could not be written (no space, read-only file system, I/O error): Exit.WRITE_FAILED."""


def resume_advice(run_dir: str | os.PathLike) -> str:
    """What `--resume RUN_DIR` does after a failure: continue the last complete checkpoint, or train again."""
    if latest_checkpoint(run_dir) is None:
        return f"no checkpoint was complete yet: --resume {run_dir} trains it again from epoch 1"
    return f"the last complete checkpoint is kept: --resume {run_dir} continues it"


def write_error(path: str | os.PathLike, reason: str, run_dir: str | os.PathLike) -> WriteError:
    return WriteError(f"cannot write {path} ({reason}); free space (or make the folder writable), then resume: "
                      f"{resume_advice(run_dir)}")


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


def remove_partial(run_dir: str | os.PathLike) -> None:
    """Delete half-written `.tmp-*` checkpoints: called by the folder's owner (runlock), so their writer is dead."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, run_dir: str | os.PathLike, epoch: int, trainer_state: dict,
                    keep: int) -> Path:
    """Save the full training state after `epoch` (1-based count of finished epochs); all ranks call this.

    A write failure on any rank (no space, read-only file system, I/O error) removes the partial folder on
    every rank and raises `WriteError` everywhere; the last complete checkpoint is untouched.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".tmp-epoch-{epoch:04d}"
    preempt.PARTIAL.add(tmp)  # a second Ctrl-C during the save removes it before quitting
    error = None
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
    except OSError as e:
        error = e
    except (RuntimeError, SafetensorError) as e:
        # torch's writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ...",
        # safetensors' as "Error while serializing: I/O error: No space left on device (os error 28)"
        if not any(k in str(e) for k in ("inline_container", "I/O error", "os error")) and "write" not in str(e).lower():
            raise
        error = OSError(errno.ENOSPC, "No space left on device", str(tmp)) if _disk_full(root) else e
    error = agree(accelerator, error, tmp, run_dir)
    if accelerator.is_main_process and error is None:
        try:  # trainer.json is written last: its presence marks the folder complete
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:
            error = e
    error = agree(accelerator, error, tmp, run_dir)
    preempt.PARTIAL.discard(tmp)
    if error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise error
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _disk_full(path: Path, below: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(path).free < below
    except OSError:
        return False


def agree(accelerator: Accelerator, error: BaseException | None, path: str | os.PathLike,
          run_dir: str | os.PathLike) -> WriteError | None:
    """Every rank learns whether any rank failed to write (so none waits in a collective for the others)."""
    local = None
    if isinstance(error, WriteError):  # already agreed on (a second agreement in the same save)
        local = str(error)
    elif error is not None:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        local = str(write_error(getattr(error, "filename", None) or path, reason, run_dir))
    failed = [local]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        failed = gather_object(failed)
    message = next((m for m in failed if m is not None), None)
    return None if message is None else WriteError(message)


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore the state saved in `path`; returns its trainer state. Tensors load with weights_only=True."""
    try:
        state = json.loads((path / TRAINER_FILE).read_text())
        accelerator.load_state(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        raise CheckpointError(f"checkpoint {path} is unreadable ({first_line(e)}); delete that folder to resume from the one "
                              "before, or start a new run") from None
    return state
