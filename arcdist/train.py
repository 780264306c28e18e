"""The training job: `accelerate launch arcdist/train.py --variant V1.1 ...`.

One code path for one CPU process, gloo DDP on CPU, and one or many GPUs (NCCL, AMP). The Trainer builds
and trains; the run folder is prepared by arcdist.rundir and written by arcdist.recorder.
"""
from __future__ import annotations

import argparse
import copy
import errno
import math
import os
import re
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script by `accelerate launch arcdist/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from arcdist import checkpoint, hardware, preempt, rundir, runinfo, tracking
from arcdist.cli import ArgumentParser
from arcdist.config import Config, ConfigError, apply_overrides, first_line, validate
from arcdist.data import (DeviceData, epoch_permutation, get_spec, load_dataset, resolve_data_dir, shard_bounds,
                          steps_per_epoch, train_batches)
from arcdist.metrics import separation_metrics
from arcdist.heads import build_head, margin_at, param_count
from arcdist.model import build_backbone, describe
from arcdist.optim import build_optimizers, build_schedulers
from arcdist.recorder import Recorder
from arcdist.variants import MAIN_VARIANT, default_variant, get_variant

TRAIN_SAMPLE_SIZE = 10_000  # fixed random training images whose features are plotted (at most)
# train.sync_every=0 on a GPU: one host read per 50 steps (see TrainConfig.sync_every)
SYNC_EVERY_ACCELERATOR = 50


@dataclass(frozen=True)
class Faults:
    """Test-only fault injection, read once from the environment (when a Trainer is built).

    ARCDIST_FAULT_NAN="EPOCH:STEP" (1-based epoch, 0-based step) makes that step's loss NaN once.
    ARCDIST_FAULT_KILL="EPOCH:STEP" makes rank 1 die by SIGKILL before that step, in the first incarnation
    only (TORCHELASTIC_RESTART_COUNT=0), so that torchrun's relaunch trains on.
    ARCDIST_FAULT_PAUSE="EPOCH:STEP" makes rank 0 create RUN_DIR/FAULT-PAUSED before that step and wait until
    the file is removed (the other ranks wait in the step's all-reduce), in a new run only (not after a
    resume or relaunch): a test signals or kills a job there, mid-epoch, with no timing luck.
    """

    nan_at: tuple[int, int] | None = None
    kill_at: tuple[int, int] | None = None
    pause_at: tuple[int, int] | None = None

    @classmethod
    def from_env(cls) -> "Faults":
        def at(name: str) -> tuple[int, int] | None:
            value = os.environ.get(name)
            return tuple(int(v) for v in value.split(":")) if value else None

        kill = None if rundir.elastic_restart() else at("ARCDIST_FAULT_KILL")
        pause = None if rundir.elastic_restart() else at("ARCDIST_FAULT_PAUSE")
        return cls(nan_at=at("ARCDIST_FAULT_NAN"), kill_at=kill, pause_at=pause)

    PAUSE_FILE = "FAULT-PAUSED"

    def pause(self, run_dir: Path, epoch: int, step: int) -> None:
        """Rank 0, at pause_at: wait while RUN_DIR/FAULT-PAUSED exists (a test removes it)."""
        path = Path(run_dir) / self.PAUSE_FILE
        path.write_text(f"epoch {epoch} step {step} pid {os.getpid()}\n")
        print(f"arcdist: fault: paused at epoch {epoch}, step {step} until {path} is removed", flush=True)
        while path.exists():
            time.sleep(0.1)


@dataclass
class TrainState:
    """The run's progress: what trainer.json holds and resume restores (torchtitan's state_dict contract)."""

    epoch: int = 0  # finished epochs
    step: int = 0  # steps done in the current epoch (a mid-epoch checkpoint resumes there)
    loss_sum: float = 0.0  # of the current epoch's steps so far
    best_accuracy: float = 0.0
    best_epoch: int = 0
    status: str = "running"  # running | finished | preempted | diverged
    wandb_id: str | None = None
    rollbacks: int = 0
    lr_scale: float = 1.0  # the learning rates' factor after rollbacks (0.5 ** rollbacks)
    diverged: dict | None = None  # where and in which tensors (summary.json's diverged_at)

    def state_dict(self) -> dict:
        state = asdict(self)
        if state["diverged"] is None:  # trainer.json has had no such key: keep the files alike
            del state["diverged"]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Take the fields `state` has (older files may lack some); the rest stay."""
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist.train", description=__doc__, name="arcdist")
    p.add_argument("--variant", default=None, help=f"variant name (default {MAIN_VARIANT}, the main job); see python -m arcdist.variants")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the variant's, 100)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default=None,
                   help="autocast (default: the variant's, auto = chosen for this machine)")
    p.add_argument("--dataset", default=None, help="mnist (default) or fashion-mnist")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/ (default $ARCDIST_DATA_DIR or ./data)")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/<variant>-s<seed>)")
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set head.margin=0.3 (repeatable)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR after its last checkpoint")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--wandb", choices=tracking.WANDB_MODES, default=None,
                   help="W&B mode (default: online with credentials, else offline)")
    p.add_argument("--group", default=None, help="W&B group (the grid id when run from a grid)")
    p.add_argument("--plot-every", type=int, default=1, help="render plots every N epochs (0 = never)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--lock-wait", type=float, default=60.0, metavar="SECONDS",
                   help="when another process owns the run folder, wait this long for it to exit, then refuse "
                        "(default 60: a requeued job may start while its previous incarnation exits)")
    args = p.parse_args(argv)
    args.default_note = None
    if args.variant is None and not args.resume:  # a resume keeps the run's own variant
        args.variant, args.default_note = default_variant()
    return args


def build_config(args: argparse.Namespace, saved: Config | None = None) -> Config:
    """The variant's config (or the saved one on resume) with command-line flags and --set applied."""
    if saved is not None:
        if args.variant is not None and args.variant != saved.variant:
            raise ConfigError(f"--resume: the run is variant {saved.variant}, not {args.variant}; "
                              f"drop --variant or pick another run folder")
        cfg = saved
    else:
        cfg = get_variant(args.variant).config
    # `accelerate launch --mixed_precision bf16|fp16` (or a config file's) applies unless --mixed-precision is
    # given; its default "no" is always exported, so it must not override a variant's own setting
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    precision = args.mixed_precision or (launcher if launcher in ("fp16", "bf16") and not saved else None)
    flags = {"train.epochs": args.epochs, "train.seed": args.seed, "train.mixed_precision": precision,
             "data.dataset": args.dataset, "data.limit_train": args.limit_train, "data.limit_test": args.limit_test,
             "train.cpu": True if args.cpu else None}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = apply_overrides(cfg, overrides)
    if saved is not None and not (args.data_dir or os.environ.get("ARCDIST_DATA_DIR")):
        data_dir = saved.data.data_dir  # resume reads the folder the run recorded
        if not Path(data_dir).is_dir():
            raise ConfigError(f"--resume: the run's data folder {data_dir} is gone; pass --data-dir DIR "
                              f"(or set ARCDIST_DATA_DIR) with the dataset's files")
    else:
        data_dir = str(Path(resolve_data_dir(args.data_dir)).absolute())  # recorded absolute: resumable anywhere
    cfg = replace(cfg, data=replace(cfg.data, data_dir=data_dir))
    if saved is not None:
        changed = {k for k in ("model", "head", "optim") if getattr(cfg, k) != getattr(saved, k)}
        if changed or cfg.data.dataset != saved.data.dataset or cfg.train.seed != saved.train.seed:
            raise ConfigError("--resume: only --epochs and --data-dir may change on resume; start a new run instead")
    spec = get_spec(cfg.data.dataset)
    if (spec.channels, spec.image_size) != (cfg.model.in_channels, cfg.model.image_size):
        raise ConfigError(f"variant {cfg.variant} takes {cfg.model.in_channels}x{cfg.model.image_size}x"
                          f"{cfg.model.image_size} images but {cfg.data.dataset} has {spec.channels}x{spec.image_size}x"
                          f"{spec.image_size}; pick a variant for it (C1 for cifar10)")
    describe(cfg.model)  # shape check of the layer list
    validate(cfg)
    return cfg


def ema_with_warmup(decay: float) -> Callable:
    """`AveragedModel`'s update: an EMA whose decay is min(decay, (1 + n) / (10 + n)) after n updates.

    TensorFlow's `ExponentialMovingAverage(num_updates=...)` rule. A fixed 0.999 would keep half its weight on
    the first 700 steps (random weights): a 3-epoch MNIST run evaluated at chance. Integer buffers (BatchNorm's
    batch count) are copied. The decay stays a device tensor: no host read.
    """
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        keep = torch.clamp((1 + n) / (10 + n), max=decay)
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, (1 - keep).to(a.dtype))
            else:
                a.copy_(c)
    return update


class Trainer:
    """Builds models, optimizers and data; trains: train_step / train_epoch / evaluate / fit, rollback, resume.

    The main process's files and W&B go through `self.recorder`; the run folder is prepared by arcdist.rundir.
    """

    def __init__(self, cfg: Config, run_dir: Path, accelerator: Accelerator, data=None, no_progress: bool = False,
                 faults: Faults | None = None):
        if "auto" in (cfg.train.mixed_precision, cfg.train.channels_last):  # built without setup_accelerator
            cfg = replace(cfg, train=replace(cfg.train, mixed_precision=accelerator.mixed_precision,
                                             channels_last=cfg.train.channels_last is True))
        self.cfg, self.run_dir, self.acc, self.no_progress = cfg, run_dir, accelerator, no_progress
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        spec = get_spec(cfg.data.dataset)
        splits = data or load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
        lt, le = cfg.data.limit_train or None, cfg.data.limit_test or None
        self.train_data = DeviceData(splits.train_x[:lt], splits.train_y[:lt], spec, accelerator.device)
        self.test_data = DeviceData(splits.test_x[:le], splits.test_y[:le], spec, accelerator.device)
        n = len(self.train_data)
        if cfg.data.batch_size > n:
            raise ConfigError(f"batch size {cfg.data.batch_size} is larger than the {n} training images; "
                              "lower --set data.batch_size or raise --limit-train")
        if cfg.data.batch_size % self.world:
            raise ConfigError(f"batch size {cfg.data.batch_size} does not split over {self.world} processes; "
                              "use a multiple of the process count")
        sample = epoch_permutation(n, cfg.train.seed, -1)[:TRAIN_SAMPLE_SIZE].sort().values
        self.train_sample = DeviceData(splits.train_x[:lt][sample], splits.train_y[:lt][sample], spec,
                                       accelerator.device)
        self.steps_per_epoch = steps_per_epoch(n, cfg.data.batch_size)

        set_seed(cfg.train.seed)
        backbone = build_backbone(cfg.model)
        if cfg.train.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
            for d in (self.train_data, self.test_data, self.train_sample):
                d.channels_last = True
        head = build_head(cfg.head, cfg.model.feature_dim, self.steps_per_epoch)
        opt_net, opt_head = build_optimizers(cfg.optim, backbone, head, fused=cfg.train.fused_optim)
        sched_net, sched_head = build_schedulers(cfg.optim, opt_net, opt_head, self.steps_per_epoch, cfg.train.epochs)
        self.head_trains = any(p.requires_grad for p in head.parameters())
        if not self.head_trains:  # nothing to synchronise: no DDP wrapper (torch refuses one without trainable params)
            head = accelerator.prepare_model(head, evaluation_mode=True)
        (self.backbone, self.head, self.opt_net, self.opt_head, self.sched_net, self.sched_head) = \
            accelerator.prepare(backbone, head, opt_net, opt_head, sched_net, sched_head)
        self.ema = None  # the averaged backbone (train.ema): saved in every checkpoint, used by evaluate()
        if cfg.train.ema:
            average = AveragedModel(accelerator.unwrap_model(self.backbone), use_buffers=True,
                                    multi_avg_fn=ema_with_warmup(cfg.train.ema))
            self.ema = accelerator.prepare_model(average, evaluation_mode=True)
        if cfg.train.compile != "off":  # in place, after the average copied the plain module; same state_dict keys
            accelerator.unwrap_model(self.backbone).compile(mode=cfg.train.compile)
        self.state = TrainState()
        self.resumed = False  # continued from a checkpoint (resume())
        self.faults = faults or Faults.from_env()
        self.recorder = Recorder(run_dir, accelerator)
        self.stop_requested = False  # all ranks agreed on a preemption request (signal or stop file)
        self.stop_file = preempt.stop_file(run_dir)  # created by batch scripts' traps: reaches every topology

    # -- one optimisation step ------------------------------------------------------------------
    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, epoch_progress: float, poison: bool
                          ) -> torch.Tensor:
        """Forward and backward at `epoch_progress` epochs (the head's margin schedule); returns this rank's flags
        on the device, unread:
        (loss, non-finite loss, non-finite features, non-finite gradients)."""
        with self.acc.autocast():
            features = self.backbone(x)
        logits = self.head(features, y, epoch_progress)
        loss = self.head_module.loss(logits, features, y)
        if poison:
            loss = loss * float("nan")
        self.acc.backward(loss)
        grads = [p.grad for p in (*self.backbone.parameters(), *self.head.parameters()) if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)  # non-finite stays non-finite (no error raised)
        return torch.stack([loss.detach().float(), (~torch.isfinite(loss)).float(),
                            (~torch.isfinite(features).all()).float(), (~torch.isfinite(grad_norm)).float()])

    def _apply_step(self) -> None:
        """Both optimizer steps, then the schedules and the average (unless fp16's scaler skipped the step)."""
        overflow = False
        scaler = self.acc.scaler
        if scaler is not None:
            # one scale update per step for both optimizers: Accelerate's optimizer.step() updates it after
            # each, so after an overflow the head would be unscaled with the already halved scale
            scale = scaler.get_scale()
            for opt in (self.opt_net, self.opt_head) if self.head_trains else (self.opt_net,):
                scaler.step(opt.optimizer)  # (the scaler refuses an optimizer without gradients)
            scaler.update()
            overflow = scaler.get_scale() < scale  # the scale only drops when the steps were skipped
        else:
            self.opt_net.step()
            self.opt_head.step()
        if not overflow:  # as Accelerate does: a skipped step advances neither the schedule nor the average
            self.head_module.after_step()  # the center rule moves the centers (other heads: nothing)
            self.sched_net.step()
            self.sched_head.step()
            if self.ema is not None:
                self.ema.update_parameters(self.acc.unwrap_model(self.backbone))

    def _stop_wanted(self) -> bool:
        """A preemption request seen by this rank: a signal, Ctrl-C, or the stop file (rank 0 looks)."""
        return self.stop_requested or preempt.requested() or (self.rank == 0 and self.stop_file.exists())

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch_progress: float, poison: bool = False
                   ) -> tuple[float, list[str]]:
        """Forward, backward and both optimizer steps. Returns (global mean loss, non-finite tensors).

        Nothing is stepped when a loss, feature or gradient is non-finite on any rank. This reads the flags
        back to the host (one synchronisation with the device); train_epoch calls it when train.sync_every
        resolves to 1 and when it replays a window that held a non-finite step.
        `poison` (tests only) makes the loss NaN, as a real divergence would.
        """
        local = self._forward_backward(x, y, epoch_progress, poison)
        flags = torch.cat([local, torch.tensor([float(self._stop_wanted())], device=local.device)])
        if self.world > 1:
            flags = self.acc.reduce(flags, reduction="sum")
        values = flags.tolist()
        scaler = self.acc.scaler  # fp16 only: there, non-finite gradients are an overflow the scaler handles
        checked = ("loss", "features") if scaler is not None else ("loss", "features", "gradients")
        bad = [name for name, v in zip(checked, values[1:4]) if v > 0]
        self.stop_requested = values[4] > 0
        if not bad:
            self._apply_step()
        self._zero_grad()
        return values[0] / self.world, bad

    def _zero_grad(self) -> None:
        self.opt_net.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)

    def _unchecked_step(self, x: torch.Tensor, y: torch.Tensor, epoch_progress: float, poison: bool
                        ) -> torch.Tensor:
        """A step that reads nothing back: applied at once, its flags returned on the device for _read_window,
        which undoes the whole window (from a snapshot) if any of its steps was non-finite."""
        local = self._forward_backward(x, y, epoch_progress, poison)
        self._apply_step()  # (never under fp16: its scaler reads its overflow flag each step, so sync_every is 1)
        self._zero_grad()
        return local

    def sync_every(self) -> int:
        """Steps between reads of the flags (train.sync_every; 0: 1 on a CPU, SYNC_EVERY_ACCELERATOR on a GPU).
        1 under fp16: the loss scaler reads its overflow flag back every step anyway."""
        if self.acc.scaler is not None:
            return 1
        every = self.cfg.train.sync_every
        return every if every > 0 else (1 if self.acc.device.type == "cpu" else SYNC_EVERY_ACCELERATOR)

    def _state_modules(self) -> list[torch.nn.Module]:
        modules = [self.acc.unwrap_model(self.backbone), self.acc.unwrap_model(self.head)]
        return modules + ([self.acc.unwrap_model(self.ema)] if self.ema is not None else [])

    def _snapshot(self) -> dict:
        """Everything a step changes, copied on the device (nothing read back): the models' parameters and
        buffers (BatchNorm statistics), the average, the optimizers' and schedules' states."""
        return dict(modules=[{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self._state_modules()],
                    optimizers=[copy.deepcopy(o.optimizer.state_dict()) for o in (self.opt_net, self.opt_head)],
                    schedulers=[copy.deepcopy(s.scheduler.state_dict()) for s in (self.sched_net, self.sched_head)])

    def _restore(self, snapshot: dict) -> None:
        for module, state in zip(self._state_modules(), snapshot["modules"]):
            module.load_state_dict(state)  # in place: DDP and the optimizers keep their parameter objects
        for opt, state in zip((self.opt_net, self.opt_head), snapshot["optimizers"]):
            opt.optimizer.load_state_dict(state)
        for sched, state in zip((self.sched_net, self.sched_head), snapshot["schedulers"]):
            sched.scheduler.load_state_dict(state)

    def _batches(self, epoch: int, start_step: int):
        return train_batches(self.train_data, self.cfg.data.batch_size, self.cfg.train.seed, epoch, self.rank,
                             self.world, start_step, self.cfg.data.shift, self.cfg.data.flip, self.cfg.data.rotate)

    def _preempted_mid_epoch(self) -> dict | None:
        """Where the epoch stops when a stop was requested before its last step (at its end, the epoch completes)."""
        return dict(preempted=True) if self.stop_requested and self.state.step < self.steps_per_epoch else None

    def _checked_step(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, epoch_progress: float,
                      poison: bool, progress) -> dict | None:
        """One step read back at once (train_step): None, or where the epoch stopped (diverged, preempted)."""
        loss, bad = self.train_step(x, y, epoch_progress, poison)
        if bad:
            return dict(diverged=dict(epoch=epoch + 1, step=step, tensors=bad))
        self.state.loss_sum += loss
        self.state.step = step + 1
        progress(1, loss)
        return self._preempted_mid_epoch()

    def _read_window(self, epoch: int, window: list[tuple], snapshot: dict, progress) -> dict | None:
        """The one host read of a window of unchecked steps [(step, epoch_progress, poison, flags), ...].

        All finite: the losses are added in step order, as train_step's would be. Otherwise the window is
        undone (the snapshot taken before its first step) and replayed step by step with train_step, which
        skips the first non-finite step and reports it exactly as sync_every=1 does. Later steps of the
        window ran on the bad weights; the restore discards them too.
        """
        flags = torch.stack([w[3] for w in window])  # (steps, 4)
        stop = torch.tensor([float(self._stop_wanted())], device=flags.device)
        packed = torch.cat([flags.flatten(), stop])
        if self.world > 1:
            packed = self.acc.reduce(packed, reduction="sum")
        values = packed.tolist()
        rows = [values[4 * i:4 * i + 4] for i in range(len(window))]
        if any(v > 0 for row in rows for v in row[1:]):
            self._restore(snapshot)
            for (step, at, poison, _), (x, y) in zip(window, self._batches(epoch, window[0][0])):
                stopped = self._checked_step(epoch, step, x, y, at, poison, progress)
                if stopped:
                    return stopped
            return None  # (replayed finite: a device's nondeterministic kernels; the replay's steps stand)
        for row in rows:
            self.state.loss_sum += row[0] / self.world
        self.state.step = window[-1][0] + 1
        self.stop_requested = values[-1] > 0
        progress(len(window), rows[-1][0] / self.world)
        return self._preempted_mid_epoch()

    def train_epoch(self, epoch: int) -> dict:
        """Train the rest of `epoch` (from state.step). Returns the epoch's stats, or where it stopped.

        The divergence and preemption flags are read back every sync_every() steps and at the epoch's end
        (see _read_window); a stop request is therefore noticed up to sync_every - 1 steps late.
        """
        self.backbone.train()
        self.head.train()
        start_step, t0 = self.state.step, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.acc.is_main_process or self.no_progress, leave=False, dynamic_ncols=True)

        def progress(steps: int, loss: float) -> None:
            done = self.state.step - start_step
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{done * self.cfg.data.batch_size / (time.perf_counter() - t0):.0f}")
            bar.update(steps)

        every, window, snapshot, stopped = self.sync_every(), [], None, None
        for step, (x, y) in enumerate(self._batches(epoch, start_step), start=start_step):
            if self.faults.pause_at == (epoch + 1, step) and self.rank == 0 and not self.resumed:
                self.faults.pause(self.run_dir, epoch + 1, step)
            if self.faults.kill_at == (epoch + 1, step) and self.rank == 1:
                print(f"arcdist: fault: rank 1 killed at epoch {epoch + 1}, step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            poison = self.faults.nan_at == (epoch + 1, step) and self.state.rollbacks == 0
            at = epoch + step / self.steps_per_epoch  # epochs done: the head's margin schedule
            if every == 1:
                stopped = self._checked_step(epoch, step, x, y, at, poison, progress)
            else:
                if not window:
                    snapshot = self._snapshot()
                window.append((step, at, poison, self._unchecked_step(x, y, at, poison)))
                if len(window) == every or step + 1 == self.steps_per_epoch:
                    stopped, window = self._read_window(epoch, window, snapshot, progress), []
            if stopped:
                bar.close()
                return stopped
        bar.close()
        seconds = time.perf_counter() - t0
        return dict(train_loss=self.state.loss_sum / self.steps_per_epoch, epoch_time_s=seconds,
                    images_per_s=(self.steps_per_epoch - start_step) * self.cfg.data.batch_size / seconds,
                    margin=margin_at(self.cfg.head, epoch + 1), lr=self.opt_net.param_groups[0]["lr"])

    # -- features of all ranks -------------------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, data: DeviceData) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D features and labels of all of `data`, each row once, in dataset order, on every rank.

        Each rank embeds a contiguous shard; shards are padded to equal length for the gather and the
        padding is cut off again, so the result has exactly len(data) rows for any number of ranks.
        (Accelerate's helpers do not do this job: `gather_for_metrics` only drops the duplicates of a
        prepared DataLoader's last batch, and we have no DataLoader; `pad_across_processes` pads alike but
        first gathers every rank's length, which shard_bounds already gives, and the cut stays ours.)
        """
        model = self.acc.unwrap_model(self.backbone) if self.ema is None else self.ema.module
        if self.world > 1:  # BN running statistics drift apart per rank; use rank 0's, as the checkpoint does
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        model.eval()
        n = len(data)
        bounds = [shard_bounds(n, r, self.world) for r in range(self.world)]
        lo, hi = bounds[self.rank]
        chunk = self.cfg.train.eval_batch_size
        with self.acc.autocast():
            # (clone: a CUDA-graphed forward, train.compile=reduce-overhead, reuses its output's memory)
            parts = [model(data.normalise(data.x[i:min(i + chunk, hi)])).float().clone() for i in range(lo, hi, chunk)]
        model.train()
        width = math.ceil(n / self.world)
        feats = torch.zeros(width, self.cfg.model.feature_dim, device=self.acc.device)
        labels = torch.full((width,), -1, dtype=torch.long, device=self.acc.device)
        if parts:
            feats[:hi - lo] = torch.cat(parts)
        labels[:hi - lo] = data.y[lo:hi]
        all_feats, all_labels = self.acc.gather((feats, labels))
        keep = torch.cat([torch.arange(r * width, r * width + b - a) for r, (a, b) in enumerate(bounds)])
        keep = keep.to(all_feats.device)
        return all_feats[keep].cpu(), all_labels[keep].cpu()

    def model_info(self) -> dict:
        """Parameters (backbone + head) and forward FLOPs per image, for summaries and reports."""
        info = describe(self.cfg.model)
        return dict(params=info["params"] + param_count(self.cfg.head, self.cfg.model.feature_dim),
                    flops=info["flops"])

    @property
    def head_module(self):
        """The head without its DDP wrapper."""
        return self.acc.unwrap_model(self.head)

    def evaluate(self) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Metrics on the whole gathered test set by the head's prediction rule (computed on every rank; only the
        main one writes)."""
        feats, labels = self.extract_features(self.test_data)
        geometry = self.head_module.geometry()
        metrics = separation_metrics(feats, labels, geometry["W"], geometry.get("b"))
        metrics["feature_norm_mean"] = feats.norm(dim=1).mean().item()
        return metrics, feats, labels

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self) -> None:
        checkpoint.save_checkpoint(self.acc, self.run_dir, self.state.epoch, self.state.state_dict(),
                                   self.cfg.train.keep_checkpoints)

    def resume(self) -> None:
        """Continue from the folder's newest checkpoint that verifies (rundir.claim found one; failed ones are moved
        aside), with its metrics rows."""
        state, path = checkpoint.resume_checkpoint(self.acc, self.run_dir)
        self.state.load_state_dict(state)
        self.state.status = "running"
        self.resumed = True
        if self.acc.is_main_process:
            runinfo.truncate_metrics(self.run_dir, self.state.epoch, checkpoint.saved_metrics(path))

    def rollback(self) -> None:
        """Restore the last checkpoint with both learning rates halved (--set train.on_diverge=rollback)."""
        rollbacks, path = self.state.rollbacks + 1, checkpoint.latest_checkpoint(self.run_dir)
        if path is not None:
            self.state.load_state_dict(checkpoint.load_checkpoint(self.acc, path))
        else:  # diverged before the first checkpoint: the bad step was not applied, so restart the epoch
            self.state.step, self.state.loss_sum = 0, 0.0
        factor = 0.5 ** rollbacks / self.state.lr_scale  # the checkpoint's lrs already carry its lr_scale
        for opt in (self.opt_net, self.opt_head):
            for group in opt.param_groups:
                group["lr"] *= factor
        for sched in (self.sched_net, self.sched_head):
            sched.scheduler.base_lrs = [lr * factor for lr in sched.scheduler.base_lrs]
        self.state.rollbacks, self.state.lr_scale, self.state.status = rollbacks, 0.5 ** rollbacks, "running"

    # -- the whole run ---------------------------------------------------------------------------
    def fit(self, plot_every: int = 1) -> TrainState:
        """Train until cfg.train.epochs, a preemption or a divergence; returns the state."""
        while self.state.epoch < self.cfg.train.epochs:
            epoch = self.state.epoch
            stats = self.train_epoch(epoch)
            if "preempted" in stats:
                self.state.status = "preempted"
                self.checkpoint()  # mid-epoch: (epoch, step, loss_sum) let resume replay the rest exactly
                if self.acc.is_main_process:
                    self.recorder.summary(self.state.state_dict(), self.model_info())
                    self.stop_file.unlink(missing_ok=True)
                return self.state
            if "diverged" in stats:
                if self.cfg.train.on_diverge == "rollback" and self.state.rollbacks < self.cfg.train.max_rollbacks:
                    self.acc.print(f"diverged at {stats['diverged']}; rolling back with halved learning rates")
                    self.rollback()
                    continue
                self.state.status, self.state.diverged = "diverged", stats["diverged"]
                self.recorder.diverged(epoch + 1, stats["diverged"])
                break
            self.end_epoch(epoch, stats, plot_every)
        if self.state.status == "running":
            self.state.status = "finished"
        if self.acc.is_main_process:
            self.recorder.finish(self.state.state_dict(), self.model_info(), gif=bool(plot_every))
        return self.state

    def end_epoch(self, epoch: int, stats: dict, plot_every: int) -> None:
        """Evaluate on all ranks' data, record metrics, features and plots, checkpoint."""
        metrics, feats, labels = self.evaluate()
        self.state.epoch, self.state.step, self.state.loss_sum = epoch + 1, 0, 0.0
        record = dict(epoch=epoch + 1, **stats, **{("test_" + k if k == "accuracy" else k): v for k, v in metrics.items()})
        if metrics["accuracy"] > self.state.best_accuracy:
            self.state.best_accuracy, self.state.best_epoch = metrics["accuracy"], epoch + 1
        want_plots = plot_every and ((epoch + 1) % plot_every == 0 or epoch + 1 == self.cfg.train.epochs)
        features = dict(test=(feats, labels))
        if want_plots:
            features["train"] = self.extract_features(self.train_sample)  # a collective: all ranks
        head = self.head_module
        self.recorder.end_epoch(record, features, head.geometry(), head.wedge(epoch + 1), head.caption(epoch + 1),
                                self.cfg.train.epochs, plots=bool(want_plots))
        self.checkpoint()


def configure_cpu(cfg: Config) -> None:
    """Process-wide CPU settings that decide speed (measured in bench/throughput.py)."""
    torch.set_flush_denormal(True)  # MNIST's many exact zeros produce denormals that halve CPU speed
    # `accelerate launch` exports OMP_NUM_THREADS=1 by default, which halves a 2-core run
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.train.threads or max(1, len(os.sched_getaffinity(0)) // local))


def setup_accelerator(cfg: Config, log_with: str | None = None) -> tuple[Config, Accelerator, hardware.Choice]:
    """Pick the device (CPU only when no accelerator is visible or train.cpu), resolve train.mixed_precision /
    train.channels_last "auto" on the main process (every rank gets its choice), build the Accelerator.

    Returns the config with the resolved values, the Accelerator, and the choice with its reason.
    """
    device = hardware.device_type(cfg.train.cpu)
    if device == "cpu":
        configure_cpu(cfg)
    # the process group, before the choice is broadcast; a collective that waits longer than
    # train.collective_timeout_s for a rank fails (and the job ends) instead of waiting forever
    state = PartialState(cpu=device == "cpu", timeout=timedelta(seconds=cfg.train.collective_timeout_s))
    choice = [None]
    if state.is_main_process:
        per_rank = max(1, cfg.data.batch_size // state.num_processes)
        choice[0] = hardware.resolve(cfg.train.mixed_precision, cfg.train.channels_last, device,
                                     probe_fn=lambda c: hardware.probe_cpu(cfg.model, per_rank, c)).to_dict()
    if state.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    resolved = hardware.Choice(**choice[0])
    cfg = replace(cfg, train=replace(cfg.train, mixed_precision=resolved.mixed_precision,
                                     channels_last=resolved.channels_last))
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=resolved.mixed_precision,
                              step_scheduler_with_optimizer=False, log_with=log_with)
    accelerator.print(f"arcdist: {device}, {resolved.label()} ({resolved.reason})")
    return cfg, accelerator, resolved


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, build everything, train; returns the exit status. Raises ConfigError on bad input."""
    preempt.install_handlers()
    args = parse_args(argv)
    run_dir, saved = rundir.locate(args)  # reads only: bad input leaves the disk as it was
    cfg = build_config(args, saved)
    _RUN.update(run_dir=run_dir, timeout=cfg.train.collective_timeout_s)
    mode = tracking.resolve_mode(args.wandb)
    cfg, accelerator, choice = setup_accelerator(cfg, log_with=None if mode == "disabled" else "wandb")
    if getattr(args, "default_note", None):
        accelerator.print(args.default_note)
    no_progress = args.no_progress or not sys.stderr.isatty()  # no bar in log files
    trainer = Trainer(cfg, run_dir, accelerator, no_progress=no_progress)  # checks data before writing anything
    if rundir.claim(run_dir, accelerator, cfg, resume=saved is not None, lock_wait=args.lock_wait,
                    launch=dict(world_size=accelerator.num_processes, argv=sys.argv if argv is None else argv,
                                distributed_type=str(accelerator.distributed_type), device=str(accelerator.device),
                                precision=choice.to_dict())):
        trainer.resume()
    if mode != "disabled":
        trainer.state.wandb_id = trainer.state.wandb_id or runinfo.new_run_id()
        tracking.init_wandb(accelerator, mode, run_dir, trainer.state.wandb_id, name=f"{cfg.variant}-s{cfg.train.seed}",
                            config=dict(cfg.to_dict(), precision=choice.to_dict()), group=args.group,
                            job_type="train", tags=[cfg.variant, cfg.data.dataset])
    try:
        state = trainer.fit(plot_every=args.plot_every)
    finally:
        accelerator.end_training()
    if state.status != "preempted":
        return 0
    status = preempt.after_stop(run_dir, state.state_dict()) if accelerator.is_main_process else 0
    return status if preempt.interrupted() else 0


COLLECTIVE_EXIT = 4  # exit status of a rank that lost contact with the others
_RUN: dict = {}  # what main() names in the one-line errors, filled in by run()


def collective_failure(e: BaseException) -> bool:
    """An error of the process group's transport: a peer rank's connection broke, or a collective timed out."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:  # (run()'s end_training has destroyed the group by now)
        return False
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        mark in text for mark in ("/gloo/", "NCCL", "Connection reset by peer", "Connection closed by peer",
                                  "Timed out waiting"))


def collective_error(e: BaseException) -> str:
    """One line: which rank on which host lost contact, the transport's words (and the peer's host), the fix."""
    text = first_line(e)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". This is typically")[0]  # gloo's source path and advice
    peer = re.search(r"\[(\d+\.\d+\.\d+\.\d+)\]", text)
    if peer:
        try:
            text += f" (peer {socket.gethostbyaddr(peer.group(1))[0]})"
        except OSError:
            pass
    rank = os.environ.get("RANK", "?")
    timeout = _RUN.get("timeout")
    bound = f" (a collective waits at most train.collective_timeout_s = {timeout:g} s)" if timeout else ""
    return (f"rank {rank} on {socket.gethostname()} lost contact with the other ranks: {text}; a rank or node "
            f"died or stopped responding{bound}; {checkpoint.resume_advice(_RUN.get('run_dir', 'RUN_DIR'))}")


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except RuntimeError as e:
        if not collective_failure(e):
            raise
        print(f"arcdist: error: {collective_error(e)}", file=sys.stderr, flush=True)
        return COLLECTIVE_EXIT
    except ConfigError as e:
        print(f"arcdist: error: {e}", file=sys.stderr)
        return 2
    except checkpoint.WriteError as e:
        print(f"arcdist: error: {e}", file=sys.stderr)
        return checkpoint.WriteError.EXIT_STATUS
    except OSError as e:  # a write outside the checked places (config.json, summary.json)
        if e.errno not in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
            raise
        run_dir = _RUN.get("run_dir", "RUN_DIR")
        print(f"arcdist: error: {checkpoint.write_error(e.filename or run_dir, e.strerror, run_dir)}", file=sys.stderr)
        return checkpoint.WriteError.EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
