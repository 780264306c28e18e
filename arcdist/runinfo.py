"""The run folder's plain files: config.json, metrics.jsonl, summary.json (all JSON, all atomic).

A torn tail (what a kill or a power cut mid-append leaves at the end of metrics.jsonl) is never parsed as a row:
readers skip it, and resume moves it to metrics.jsonl.torn beside the file with a one-line warning.
"""
from __future__ import annotations

import json
import math
import os
import platform
import secrets
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from arcdist.config import Config, ConfigError
from arcdist.evaluation.retrieval import METRICS as RETRIEVAL
# data.train_classes (arcdist.evaluation.openset)
UNSEEN = ("unseen_auroc", "unseen_auroc_norm", *(f"unseen_{k}" for k in RETRIEVAL))
from arcdist.status import RunStatus

CONFIG = "config.json"  # written when a run starts: its presence marks a started run
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PACKAGES = ("torch", "torchvision", "accelerate", "wandb", "matplotlib", "numpy", "arcdist")


def atomic_write(path: Path, data: str | bytes) -> None:
    """`path` holds `data` whole or not at all (written beside it, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> str | None:
    """The commit of the arcdist source tree, with '-dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_config(run_dir: Path, cfg: Config, **extra) -> None:
    """config.json: the resolved config, library versions, git SHA and how the run was launched."""
    import torch

    doc = dict(config=cfg.to_dict(), versions=versions(), git_sha=git_sha(),
               cuda=torch.version.cuda, device_count=torch.cuda.device_count(), **extra)
    atomic_write(run_dir / CONFIG, json.dumps(doc, indent=1, default=str))


def update_config(run_dir: Path, **fields) -> None:
    """config.json with top-level `fields` added or replaced (atomically)."""
    path = run_dir / CONFIG
    doc = json.loads(path.read_text())
    doc.update(fields)
    atomic_write(path, json.dumps(doc, indent=1, default=str))


def strict(obj):
    """`obj` with every non-finite float as None: Python writes NaN and Infinity as bare words that no strict JSON
    reader (jq, a browser's JSON.parse) accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def append_metrics(run_dir: Path, record: dict) -> None:
    """One JSON line, written whole or not at all (a failed write is cut back off: no partial line); non-finite
    floats as null (`strict`)."""
    line = (json.dumps(strict(record)) + "\n").encode()
    fd = os.open(run_dir / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(28, "No space left on device (short write)", str(run_dir / METRICS))
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # (UnicodeDecodeError is one)
        return None
    return row if isinstance(row, dict) else None


def parse_jsonl(path: Path) -> tuple[list[dict], bytes]:
    """The rows of a JSONL file (none when it is absent) and its torn tail: the bytes from the first line that is
    not a whole JSON object to the end, when no whole row follows it (a row cut short, NUL bytes after a power cut).
    A bad line with rows after it is no tear: ConfigError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], b""
    rows: list[dict] = []
    torn_at = bad_line = None
    offset = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        row = _row(line) if line.strip() else None
        if row is not None:
            if torn_at is not None:
                raise ConfigError(f"{path} line {bad_line} is not a JSON row, yet rows follow it (not a torn tail); "
                                  "move that line out of the file, then resume")
            rows.append(row)
        elif line.strip() and torn_at is None:
            torn_at, bad_line = offset, number
        offset += len(line) + 1
    return rows, b"" if torn_at is None else data[torn_at:]


def set_aside(path: Path, torn: bytes) -> Path:
    """Write `torn` to PATH.torn (PATH.torn-2, ... when taken: an earlier tear is never overwritten); returns it."""
    dest, n = path.with_name(path.name + ".torn"), 2
    while dest.exists():
        dest, n = path.with_name(f"{path.name}.torn-{n}"), n + 1
    atomic_write(dest, torn)
    return dest


def warn(message: str) -> None:
    print(f"arcdist: warning: {message}", file=sys.stderr, flush=True)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, without a torn tail (read only: resume's truncate_metrics sets the tail aside)."""
    return parse_jsonl(Path(run_dir) / METRICS)[0]


def truncate_metrics(run_dir: Path, epochs_done: int, saved: list[dict] | None = None) -> None:
    """Drop the rows of epochs after the checkpoint being resumed (they will be trained again) and set a torn tail
    aside (warned, kept in metrics.jsonl.torn). `saved`: the rows the checkpoint holds; they win, so a row the live
    file lost (a power cut before it reached the disk) is restored and none is duplicated."""
    path = Path(run_dir) / METRICS
    rows, torn = parse_jsonl(path)
    if torn:
        dest = set_aside(path, torn)
        warn(f"{path} ended in a torn line ({len(torn)} bytes, what a kill or power cut mid-write leaves); "
             f"moved it to {dest} and resuming")
    rows = [r for r in rows if r.get("epoch", 0) <= epochs_done]
    if saved is not None:
        saved = [r for r in saved if r.get("epoch", 0) <= epochs_done]
        if saved != rows:
            warn(f"{path} held {len(rows)} rows for the {epochs_done} epochs of the checkpoint resumed, which holds "
                 f"{len(saved)}; its rows are used")
        rows = saved
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_summary(run_dir: Path, state: dict, extra: dict | None = None) -> dict:
    """summary.json: status, final and best test metrics (plus `extra`, e.g. params and FLOPs)."""
    rows = [r for r in read_metrics(run_dir) if "test_accuracy" in r]
    final = rows[-1] if rows else {}
    summary = dict(status=state["status"], epochs=state["epoch"], best_accuracy=state["best_accuracy"],
                   best_epoch=state["best_epoch"], diverged=state["status"] == RunStatus.DIVERGED,
                   final_accuracy=final.get("test_accuracy"), balanced_accuracy=final.get("balanced_accuracy"),
                   intra_spread_deg=final.get("intra_spread_deg"),
                   min_centre_angle_deg=final.get("min_centre_angle_deg"),
                   **{k: final[k] for k in (*RETRIEVAL, *UNSEEN) if k in final}, wandb_id=state.get("wandb_id"),
                   wall_time_s=sum(r.get("epoch_time_s", 0.0) for r in rows), rollbacks=state.get("rollbacks", 0),
                   **(extra or {}))
    if state.get("diverged"):
        summary["diverged_at"] = state["diverged"]
    atomic_write(run_dir / SUMMARY, json.dumps(strict(summary), indent=1))
    return summary


def read_summary(run_dir: Path) -> dict:
    """summary.json, or {} when absent or unreadable (written atomically, it can only be torn by a power cut)."""
    try:
        return _row((Path(run_dir) / SUMMARY).read_bytes()) or {}
    except FileNotFoundError:
        return {}


def set_aside_torn_summary(run_dir: Path) -> None:
    """On resume: an unreadable summary.json is moved to summary.json.torn (it is written anew at the end)."""
    path = Path(run_dir) / SUMMARY
    if path.exists() and _row(data := path.read_bytes()) is None:
        dest = set_aside(path, data)
        path.unlink()
        warn(f"{path} is unreadable (torn by a power cut?); moved it to {dest} and resuming")


def new_run_id() -> str:
    return secrets.token_hex(4)
