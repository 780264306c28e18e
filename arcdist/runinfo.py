"""The run folder's plain files: config.json, metrics.jsonl, summary.json (all JSON, all atomic)."""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from arcdist.config import Config
from arcdist.status import RunStatus

CONFIG = "config.json"  # written when a run starts: its presence marks a started run
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PACKAGES = ("torch", "torchvision", "accelerate", "wandb", "matplotlib", "numpy", "arcdist")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
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


def append_metrics(run_dir: Path, record: dict) -> None:
    """One JSON line, written whole or not at all (a failed write is cut back off: no partial line)."""
    line = (json.dumps(record) + "\n").encode()
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


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drop records of epochs after the checkpoint being resumed (they will be trained again)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs_done]
    atomic_write(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def write_summary(run_dir: Path, state: dict, extra: dict | None = None) -> dict:
    """summary.json: status, final and best test metrics (plus `extra`, e.g. params and FLOPs)."""
    rows = [r for r in read_metrics(run_dir) if "test_accuracy" in r]
    final = rows[-1] if rows else {}
    summary = dict(status=state["status"], epochs=state["epoch"], best_accuracy=state["best_accuracy"],
                   best_epoch=state["best_epoch"], diverged=state["status"] == RunStatus.DIVERGED,
                   final_accuracy=final.get("test_accuracy"), intra_spread_deg=final.get("intra_spread_deg"),
                   min_centre_angle_deg=final.get("min_centre_angle_deg"), wandb_id=state.get("wandb_id"),
                   wall_time_s=sum(r.get("epoch_time_s", 0.0) for r in rows), rollbacks=state.get("rollbacks", 0),
                   **(extra or {}))
    if state.get("diverged"):
        summary["diverged_at"] = state["diverged"]
    atomic_write(run_dir / SUMMARY, json.dumps(summary, indent=1))
    return summary


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def new_run_id() -> str:
    return secrets.token_hex(4)
