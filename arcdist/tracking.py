"""W&B through Accelerate's tracker: online with credentials, offline without, never a login prompt.

Also reads an offline run's `.wandb` log back (wandb 0.31 ships no reader), for tests and reports.
"""
from __future__ import annotations

import math
import netrc
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

from accelerate import Accelerator

from arcdist.config import first_line

WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "arcdist"


def has_credentials() -> bool:
    """True when W&B has an API key from the environment or ~/.netrc (no network needed to tell)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(flag: str | None) -> str:
    """--wandb, else $WANDB_MODE, else online with credentials and offline without; ConfigError (before anything is
    written) for a mode W&B does not know or an ARCDIST_WANDB_INIT_TIMEOUT that is not a number of seconds."""
    from arcdist.errors import ConfigError

    mode = flag or os.environ.get("WANDB_MODE") or ("online" if has_credentials() else "offline")
    mode = "disabled" if mode == "dryrun" else mode
    if mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={mode}: expected one of {', '.join(WANDB_MODES)} (or dryrun); set it so, "
                          "or pass --wandb MODE")
    if mode != "disabled":
        init_timeout()
    return mode


def init_timeout() -> float:
    """Seconds an online start may take ($ARCDIST_WANDB_INIT_TIMEOUT, default 30) before the offline fallback."""
    from arcdist.errors import ConfigError

    text = os.environ.get("ARCDIST_WANDB_INIT_TIMEOUT", "30")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ConfigError(f"ARCDIST_WANDB_INIT_TIMEOUT={text}: expected seconds above 0, e.g. 30")
    return value


def init_wandb(accelerator: Accelerator, mode: str, run_dir: Path, run_id: str, name: str, config: dict,
               group: str | None, job_type: str, tags: list[str], init_timeout_s: float | None = None) -> str:
    """Start (or resume, same id) the W&B run on the main process; returns the mode actually used.

    An online start that fails or times out falls back to offline with a one-line warning.
    """
    if mode == "disabled":
        return mode
    os.environ.setdefault("WANDB_SILENT", "true")
    # never prompt: a missing key in online mode is an error, which falls back to offline below
    os.environ["WANDB_CONSOLE"] = os.environ.get("WANDB_CONSOLE", "off")
    import wandb

    kwargs = dict(id=run_id, resume="allow", name=name, group=group, job_type=job_type, tags=tags,
                  dir=os.environ.get("WANDB_DIR") or str(run_dir), entity=os.environ.get("WANDB_ENTITY"))
    project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
    if init_timeout_s is None:
        init_timeout_s = init_timeout()
    for attempt in ((mode,) if mode == "offline" else (mode, "offline")):
        settings = wandb.Settings(mode=attempt, init_timeout=init_timeout_s, console="off", silent=True,
                                  x_disable_stats=True)
        try:
            accelerator.init_trackers(project, config=config, init_kwargs={"wandb": dict(kwargs, settings=settings)})
            return attempt
        except Exception as e:  # noqa: BLE001 - any failure to reach W&B falls back to offline
            accelerator.trackers = []
            wandb.teardown()  # the half-started online run holds the id; release it for the offline retry
            if accelerator.is_main_process:
                print(f"warning: W&B {attempt} start failed ({first_line(e)}); "
                      "logging offline instead (sync later with `wandb sync`)")
    return "disabled"


def wandb_run(accelerator: Accelerator):
    """The live wandb Run object on the main process, or None."""
    if not accelerator.is_main_process:
        return None
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            return tracker.tracker
    return None


# --- reading an offline run's .wandb file (a LevelDB-style log of protobuf Records) ---
_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version 0
_RECORD = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    ident, magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B log")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD.size:  # block trailer padding
            pos += left
            continue
        crc, length, kind = _RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + _RECORD.size: pos + _RECORD.size + length]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += _RECORD.size + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
            pending = b""


def read_offline_run(run_dir: str | os.PathLike) -> dict:
    """History rows, config and summary from the newest `.wandb` file under `run_dir`."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).rglob("*.wandb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no .wandb file under {run_dir}")
    out: dict = {"history": [], "config": {}, "summary": {}, "run": {}}
    for raw in _records(files[-1]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _put(row, item, json.loads(item.value_json))
            out["history"].append(row)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(out["summary"], item, json.loads(item.value_json))
        elif kind == "run":
            out["run"] = dict(id=rec.run.run_id, name=rec.run.display_name, group=rec.run.run_group,
                              job_type=rec.run.job_type, tags=list(rec.run.tags))
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
    return out


def _put(target: dict, item, value) -> None:
    """Store a history/summary item under its key, or nested along its nested_key path."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
