"""The run folder before training: which folder (new, resumed, or torchrun's relaunch), then claiming it.

`locate` only reads, so bad input changes nothing on disk; the Trainer then checks the data; `claim` creates
the folder, takes its lock, removes what a dead writer left and writes config.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from arcdist import checkpoint, cluster, preempt, runinfo
from arcdist.status import ENDED
from arcdist.config import Config, ConfigError, apply_overrides, first_line, from_dict
from arcdist.runlock import LOCK_FILE, RunLock
from arcdist.variants import default_variant, get_variant

_HELD: list[RunLock] = []  # the run folder's lock, held for the life of the process


def elastic_restart() -> bool:
    """True in workers that torchrun relaunched after a failure (--max-restarts)."""
    return cluster.current().restart_count > 0


def default_run_dir(args: argparse.Namespace) -> Path:
    """--output-dir, else runs/<variant>-s<seed> (the seed of --seed, --set train.seed=N, or the variant)."""
    if args.output_dir:
        return Path(args.output_dir)
    variant = args.variant or default_variant()[0]
    seed = [f"train.seed={args.seed}"] if args.seed is not None else []
    cfg = apply_overrides(get_variant(variant).config, seed + list(args.overrides))  # as build_config orders them
    return Path(f"runs/{variant}-s{cfg.train.seed}")


def load_saved_config(run_dir: Path, flag: str = "--resume ") -> Config:
    """The config a run recorded in its folder; ConfigError (one line, `flag` first) when there is none."""
    path = run_dir / runinfo.CONFIG
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{flag}{run_dir}: a file, not a run folder; pass the folder a run wrote")
    try:
        return from_dict(json.loads(path.read_text())["config"])
    except FileNotFoundError:
        raise ConfigError(f"{flag}{run_dir}: no config.json there, so it is not an arcdist run folder; "
                          "pass the folder a run wrote") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{flag}{run_dir}: config.json is unreadable ({first_line(e)}); start a new run") from None


def locate(args: argparse.Namespace) -> tuple[Path, Config | None]:
    """The run folder, and its saved config when the run continues one. Reads only; raises ConfigError.

    --resume DIR continues DIR from its latest complete checkpoint; a run that stopped before its first one
    (killed, a node lost, a full disk) starts again from epoch 1 with its saved config, as a worker that
    torchrun relaunched does. Otherwise the folder must be new or empty (never overwrite a run) and creatable.
    """
    run_dir = Path(args.resume) if args.resume else default_run_dir(args)
    if args.resume or (elastic_restart() and checkpoint.latest_checkpoint(run_dir) is not None):
        saved = load_saved_config(run_dir)
        ended = runinfo.read_summary(run_dir).get("status")
        if checkpoint.latest_checkpoint(run_dir) is None and ended in ENDED:
            raise ConfigError(f"--resume {run_dir}: the run ended {ended} without a complete checkpoint, so there is "
                              "nothing to continue; start a new run instead")
        return run_dir, saved
    if elastic_restart() and run_dir.is_dir():
        return run_dir, None
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a folder; choose another --output-dir")
    # a start killed before config.json leaves only the lock file (or a temporary beside it): not a run yet
    leftovers = (LOCK_FILE,)
    if run_dir.exists() and any(p.name not in leftovers and not p.name.endswith(".tmp") for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                          "or choose another --output-dir")
    parent = run_dir.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {run_dir} ({parent} is not a writable folder); "
                          "choose a writable --output-dir")
    return run_dir, None


def claim(run_dir: Path, accelerator: Accelerator, cfg: Config, *, resume: bool, lock_wait: float,
          launch: dict) -> bool:
    """Make `run_dir` this run's (all ranks call; the main process writes). Returns whether to continue from
    its latest checkpoint: False for a new run and for a `resume` of a run that never completed one.

    Creates it and takes its lock (waiting up to `lock_wait` s; every rank raises the refusal), then removes what
    a dead writer left: a stale stop file, half-written checkpoints, and the metrics of an incarnation that
    died before its first checkpoint. A run that starts at epoch 1 gets config.json with the config and
    `launch` (world size, argv, device, precision).
    """
    busy = [None]
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create {run_dir} ({e.strerror}); choose a writable --output-dir") from None
        try:  # held until this process exits; nothing is written to the folder before it is ours
            _HELD.append(RunLock(run_dir))
            _HELD[-1].acquire(lock_wait)
        except ConfigError as e:
            busy[0] = str(e)
        else:  # a new run found the folder empty before the lock: another start may have filled it since
            if not resume and not elastic_restart() and (run_dir / runinfo.CONFIG).exists():
                _HELD.pop().release()
                busy[0] = (f"{run_dir} already holds a run (another process started it meanwhile); pass --resume "
                           f"{run_dir} to continue it, or choose another --output-dir")
    if accelerator.num_processes > 1:
        broadcast_object_list(busy, from_process=0)
    if busy[0]:
        raise ConfigError(busy[0])
    # read under the lock: the checkpoint the folder holds now, not when the arguments were checked
    from_checkpoint = resume and checkpoint.latest_checkpoint(run_dir) is not None
    if accelerator.is_main_process:
        preempt.clear_stale_stop_file(run_dir)
        checkpoint.remove_partial(run_dir)  # left by a writer that died (we own the folder now)
        if resume or elastic_restart():
            runinfo.set_aside_torn_summary(run_dir)
        if not from_checkpoint:
            if resume or elastic_restart():  # died before the first checkpoint: the epochs run again
                print(f"arcdist: {run_dir} holds no complete checkpoint: training it again from epoch 1",
                      file=sys.stderr, flush=True)
                runinfo.truncate_metrics(run_dir, 0)
            runinfo.write_config(run_dir, cfg, **launch)
    accelerator.wait_for_everyone()
    return from_checkpoint
