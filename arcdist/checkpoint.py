"""Atomic checkpoints around `accelerator.save_state` / `load_state`.

A checkpoint is `RUN/checkpoints/epoch-NNNN/`: Accelerate's state (both models as safetensors, both
optimizers, the scheduler, RNG states, grad scaler) plus `trainer.json` (epoch, best metrics, W&B id).
It is written to a hidden temporary folder and renamed into place only once complete, so a crash
mid-write never leaves a checkpoint that resume would choose. The newest K are kept.

Before the rename, `checksums.sha256` gets the SHA-256 of every other file (`sha256sum -c` reads it), with a copy of
metrics.jsonl among them. Resume verifies them: a checkpoint that fails (a file changed, missing or unreadable) is
moved aside to `failed-epoch-NNNN` and the one before it is used.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors import SafetensorError

from arcdist import preempt, runinfo
from arcdist.errors import CheckpointError, WriteError, first_line
from arcdist.status import ENDED

TRAINER_FILE = "trainer.json"
CHECKSUMS = "checksums.sha256"  # sha256sum's format: "HEX  PATH" per file
FAILED = "failed-"  # prefix of a checkpoint moved aside by resume
_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")




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
    found = [p for p in root.glob("epoch-*") if re.fullmatch(r"epoch-\d+", p.name) and (p / TRAINER_FILE).is_file()]
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
        # torch's writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ..." or, when
        # its file stream fails at the end, "basic_ios::clear: iostream error"; safetensors' as "Error while serializing: I/O error: No space left on device (os error 28)"
        if not any(k in str(e) for k in ("inline_container", "iostream error", "I/O error", "os error")) and "write" not in str(e).lower():
            raise
        error = OSError(errno.ENOSPC, "No space left on device", str(tmp)) if _disk_full(root) else e
    error = agree(accelerator, error, tmp, run_dir)
    if accelerator.is_main_process and error is None:
        try:  # trainer.json marks the folder complete; the checksums, written last, cover it too
            metrics = Path(run_dir) / runinfo.METRICS  # the rows this state goes with: resume restores them
            (tmp / runinfo.METRICS).write_bytes(metrics.read_bytes() if metrics.exists() else b"")
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
            write_checksums(tmp)
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
        reason = f"is unreadable ({first_line(e)})"
        raise CheckpointError(f"checkpoint {path} {reason}; --resume moves it aside and continues from the one before",
                              reason) from None
    return state


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(folder: Path) -> None:
    """`folder/checksums.sha256`: the SHA-256 of every other file in it (SHA-256, not BLAKE2b: OpenSSL's uses the
    CPU's SHA instructions, 1.8x faster than hashlib's BLAKE2b here, and coreutils' `sha256sum -c` checks it by hand)."""
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in _files(folder)]
    (folder / CHECKSUMS).write_text("".join(lines))  # (in the temporary folder: the rename makes it atomic)


def verify(folder: Path) -> str | None:
    """Why `folder` fails its checksums (a file differs, is missing, is not listed, or the list is unreadable);
    None when every file matches. A folder without checksums.sha256 (an older arcdist's) also gives None."""
    listing = folder / CHECKSUMS
    if not listing.exists():
        return None
    try:
        lines = listing.read_text().splitlines()
        expected = {}
        for number, line in enumerate(lines, 1):
            match = _LINE.fullmatch(line)
            if match is None or ".." in Path(match[2]).parts or Path(match[2]).is_absolute():
                return f"{CHECKSUMS} is unreadable (line {number} is not 'SHA256  FILE')"
            expected[match[2]] = match[1]
        found = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
        missing, unlisted = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        if missing:
            return f"{missing[0]} is missing"
        if unlisted:
            return f"{unlisted[0]} is not in its {CHECKSUMS}"
        for name, digest in expected.items():
            if sha256(found[name]) != digest:
                return f"{name} does not match its checksum"
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read it ({first_line(e)})"
    return None


def move_aside(path: Path, why: str) -> Path:
    """Rename a failed checkpoint to failed-epoch-NNNN beside it (never deleted, never chosen again), warn."""
    dest, n = path.with_name(FAILED + path.name), 2
    while dest.exists():
        dest, n = path.with_name(f"{FAILED}{path.name}-{n}"), n + 1
    os.replace(path, dest)
    runinfo.warn(f"checkpoint {path} {why}; moved it to {dest}; trying the one before")
    return dest


def _newest_verified(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint whose checksums match; the newer ones that fail are moved aside (main process)."""
    for path in reversed(list_checkpoints(run_dir)):
        why = verify(path)
        if why is None:
            if not (path / CHECKSUMS).exists():
                runinfo.warn(f"checkpoint {path} has no {CHECKSUMS} (an older arcdist wrote it): loaded unverified")
            return path
        move_aside(path, f"fails its checksums ({why})")
    return None


def resume_checkpoint(accelerator: Accelerator, run_dir: str | os.PathLike) -> tuple[dict, Path]:
    """Load the newest checkpoint that verifies and loads; returns its trainer state and path. All ranks call this.

    The main process checks the checksums, newest first; a checkpoint that fails them, or that any rank cannot load,
    is moved aside with a one-line warning and the one before is tried. With none left: CheckpointError (exit 2).
    """
    while True:
        chosen = [None]
        if accelerator.is_main_process:
            found = _newest_verified(run_dir)
            chosen[0] = None if found is None else str(found)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(chosen, from_process=0)
        if chosen[0] is None:
            ended = runinfo.read_summary(Path(run_dir)).get("status") in ENDED
            then = "start a new run" if ended else f"--resume {run_dir} again trains it from epoch 1"
            raise CheckpointError(f"no checkpoint of {run_dir} verifies (each was moved aside to "
                                  f"{checkpoint_dir(run_dir) / FAILED}*); {then}")
        path, state, error = Path(chosen[0]), None, None
        try:
            state = load_checkpoint(accelerator, path)
        except CheckpointError as e:
            error = e.reason
        failed = [error]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            failed = gather_object(failed)
        why = next((m for m in failed if m is not None), None)
        if why is None:
            return state, path
        if accelerator.is_main_process:
            move_aside(path, why)
        accelerator.wait_for_everyone()


def saved_metrics(path: Path) -> list[dict] | None:
    """The metrics rows checkpoint `path` holds (None for an older arcdist's checkpoint, which holds none)."""
    copy = path / runinfo.METRICS
    return runinfo.parse_jsonl(copy)[0] if copy.exists() else None
