"""The loop: epochs of guarded steps, evaluation on all ranks' features, checkpoints, rollback and resume.

The Trainer builds the models, optimizers and device-resident data from the config and hands them to its
components: the Stepper (arcdist.step) takes the steps, the Recorder (arcdist.recorder) writes the main
process's files and W&B, arcdist.checkpoint saves and loads, and `TrainState` is the progress they save.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from arcdist import checkpoint, preempt, runinfo
from arcdist.config import Config, ConfigError
from arcdist.data import DeviceData, Order, folder_line, load_to_device, train_batches
from arcdist.datasets import run_spec, sample_indices
from arcdist.faults import Faults
from arcdist.evaluation.gather import gather_features
from arcdist.heads import build_head, param_count
from arcdist.evaluation.metrics import separation_metrics
from arcdist.evaluation.openset import SeenClasses, unseen_metrics
from arcdist.evaluation.retrieval import retrieval_metrics
from arcdist.model import build_backbone, describe, start_weights
from arcdist.optim import EMA, build_optimizers, build_schedulers
from arcdist.recorder import Recorder
from arcdist.status import RunStatus
from arcdist.stopwatch import Stopwatch
from arcdist.step import StepModels, Stepper, StepSettings, sync_every

TRAIN_SAMPLE_SIZE = 5_000  # fixed random training images whose features are plotted (at most): embedding them costs
# each epoch about 1 s per 5,000 on 2 AVX2 cores, and 5,000 points show the classes as 10,000 do
SAMPLE_SHARE, SAMPLE_FLOOR = 10, 1_000  # below 50,000 images a tenth of them, not fewer than 1,000 (or all)


def train_sample_size(n: int) -> int:
    """How many of `n` training images are drawn in the plots each epoch. Embedding them is a forward pass, a third
    of a training step's work per image: all 3,000 of a folder took 27 % of ResNet-18's epoch, a tenth of 60,000
    takes 3 %."""
    return min(TRAIN_SAMPLE_SIZE, n, max(n // SAMPLE_SHARE, SAMPLE_FLOOR))


@dataclass
class TrainState:
    """The run's progress: what trainer.json holds and resume restores (torchtitan's state_dict contract)."""

    epoch: int = 0  # finished epochs
    step: int = 0  # steps done in the current epoch (a mid-epoch checkpoint resumes there)
    loss_sum: float = 0.0  # of the current epoch's steps so far
    # the total gradient norms (before clipping) of the current epoch's steps so far that had a finite one (under
    # fp16 a step the scaler skipped has none): sum, max and count
    grad_norm_sum: float = 0.0
    grad_norm_max: float = 0.0
    grad_norm_steps: int = 0
    best_accuracy: float = 0.0
    best_epoch: int = 0
    status: RunStatus = RunStatus.RUNNING  # running | finished | preempted | diverged
    wandb_id: str | None = None
    rollbacks: int = 0
    lr_scale: float = 1.0  # the learning rates' factor after rollbacks (0.5 ** rollbacks)
    diverged: dict | None = None  # where and in which tensors (summary.json's diverged_at)

    def state_dict(self) -> dict:
        state = asdict(self)
        state["status"] = RunStatus(self.status).value
        if state["diverged"] is None:  # trainer.json has had no such key: keep the files alike
            del state["diverged"]
        return state

    def add_grad_norms(self, norms: list[float]) -> None:
        """Count the steps' gradient norms into the epoch's (an fp16 step the scaler skipped has a non-finite one)."""
        for norm in norms:
            if math.isfinite(norm):
                self.grad_norm_sum, self.grad_norm_steps = self.grad_norm_sum + norm, self.grad_norm_steps + 1
                self.grad_norm_max = max(self.grad_norm_max, norm)

    def grad_norm_stats(self) -> dict:
        """The epoch's mean and max total gradient norm before clipping (NaN: no step had a finite one)."""
        if not self.grad_norm_steps:
            return dict(grad_norm_mean=math.nan, grad_norm_max=math.nan)
        return dict(grad_norm_mean=self.grad_norm_sum / self.grad_norm_steps, grad_norm_max=self.grad_norm_max)

    def load_state_dict(self, state: dict) -> None:
        """Take the fields `state` has (older files may lack some); the rest stay."""
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, RunStatus(state[f.name]) if f.name == "status" else state[f.name])


@dataclass(frozen=True)
class Stopped:
    """An epoch that ended before its last step: preempted (a stop request) or diverged (where: epoch, step,
    tensors)."""

    status: RunStatus
    where: dict | None = None


class Trainer:
    """Builds models, optimizers and data; trains: train_epoch / evaluate / fit, rollback, resume."""

    def __init__(self, cfg: Config, run_dir: Path, accelerator: Accelerator, data=None, no_progress: bool = False,
                 faults: Faults | None = None, new_run: bool = False):
        if "auto" in (cfg.train.mixed_precision, cfg.train.channels_last):  # resolved once, by setup_accelerator
            raise ValueError("Trainer needs train.mixed_precision and train.channels_last resolved: build the config "
                             "and the Accelerator with arcdist.hardware.setup_accelerator, or set both")
        self.cfg, self.run_dir, self.acc, self.no_progress = cfg, run_dir, accelerator, no_progress
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.train_data, self.test_data = load_to_device(cfg.data, accelerator.device, data, cfg.model)
        if cfg.data.dataset == "folder" and data is None and (line := folder_line(self.train_data, self.test_data)):
            accelerator.print(line)
        # data.train_classes: the head's rows are the seen classes; the test split keeps every class (arcdist.evaluation.openset)
        self.seen = SeenClasses.of(cfg.data.train_classes, run_spec(cfg.data, cfg.model).num_classes)
        if self.seen is not None:
            self.train_data = self.seen.train_only(self.train_data)
        n = len(self.train_data)
        if cfg.data.batch_size > n:
            more = " or raise --limit-train" if cfg.data.limit_train else ""
            raise ConfigError(f"batch size {cfg.data.batch_size} is larger than the {n} training images; "
                              f"lower --set data.batch_size{more}")
        if cfg.data.batch_size % self.world:
            lo = cfg.data.batch_size // self.world * self.world
            near = " or ".join(str(b) for b in sorted({max(lo, self.world), lo + self.world}))
            raise ConfigError(f"batch size {cfg.data.batch_size} does not split over {self.world} processes; "
                              f"use a multiple of {self.world} ({near}), or leave data.batch_size unset")
        self.train_sample = self.train_data.select(sample_indices(n, cfg.train.seed, train_sample_size(n)))
        self.order = Order.of(cfg, self.rank, self.world)
        self.steps_per_epoch = self.order.steps(n)

        set_seed(cfg.train.seed)
        backbone = build_backbone(cfg.model)
        if new_run:  # model.weights: what a new run starts from (a resume's checkpoint holds its own)
            start_weights(backbone, cfg.model)
        if cfg.train.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
            for d in (self.train_data, self.test_data, self.train_sample):
                d.channels_last = True
        head = build_head(cfg.head, cfg.model.feature_dim, self.steps_per_epoch)
        opt_net, opt_head = build_optimizers(cfg.optim, backbone, head, fused=cfg.train.fused_optim)
        sched_net, sched_head = build_schedulers(cfg.optim, opt_net, opt_head, self.steps_per_epoch, cfg.train.epochs)
        head_trains = any(p.requires_grad for p in head.parameters())
        if not head_trains:  # nothing to synchronise: no DDP wrapper (torch refuses one without trainable params)
            head = accelerator.prepare_model(head, evaluation_mode=True)
        (self.backbone, self.head, self.opt_net, self.opt_head, self.sched_net, self.sched_head) = \
            accelerator.prepare(backbone, head, opt_net, opt_head, sched_net, sched_head)
        self.ema = None  # the averaged backbone (train.ema): saved in every checkpoint, used by evaluate()
        if cfg.train.ema:
            average = EMA(accelerator.unwrap_model(self.backbone), cfg.train.ema)
            self.ema = accelerator.prepare_model(average, evaluation_mode=True)
        if cfg.train.compile != "off":  # in place, after the average copied the plain module; same state_dict keys
            accelerator.unwrap_model(self.backbone).compile(mode=cfg.train.compile)
        self.state = TrainState()
        self.clock = Stopwatch()  # this process's time per part of its epochs (summary.json's time_s)
        self.resumed = False  # continued from a checkpoint (resume())
        self.faults = faults or Faults.from_env()
        self.recorder = Recorder(run_dir, accelerator)
        self.stop_requested = False  # all ranks agreed on a preemption request (signal or stop file)
        self.stop_file = preempt.stop_file(run_dir)  # created by batch scripts' traps: reaches every topology
        models = StepModels(backbone=self.backbone, head=self.head, optimizers=(self.opt_net, self.opt_head),
                            schedulers=(self.sched_net, self.sched_head), ema=self.ema)
        settings = StepSettings(every=sync_every(accelerator, cfg.train.sync_every),
                                clip_grad_norm=cfg.train.clip_grad_norm, head_trains=head_trains,
                                stop_wanted=self._stop_wanted)
        self.stepper = Stepper(accelerator, models, settings)

    @property
    def head_module(self):
        """The head without its DDP wrapper."""
        return self.acc.unwrap_model(self.head)

    def _stop_wanted(self) -> bool:
        """A preemption request seen by this rank: a signal, Ctrl-C, or the stop file (rank 0 looks)."""
        return self.stop_requested or preempt.requested() or (self.rank == 0 and self.stop_file.exists())

    def _batches(self, epoch: int, start_step: int):
        return train_batches(self.train_data, self.order, epoch, start_step)

    # -- one epoch ---------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict | Stopped:
        """Train the rest of `epoch` (from state.step): its stats, or where it stopped. The flags are read back
        every train.sync_every steps (arcdist.step), so a stop request is noticed up to that many steps late."""
        self.backbone.train()
        self.head.train()
        start, spe, t0 = self.state.step, self.steps_per_epoch, time.perf_counter()
        if start == 0:
            self.state.grad_norm_sum, self.state.grad_norm_max, self.state.grad_norm_steps = 0.0, 0.0, 0
        bar = tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not self.acc.is_main_process or self.no_progress, dynamic_ncols=True)
        for step, (x, y) in enumerate(self._batches(epoch, start), start=start):
            self.faults.before_step(self.run_dir, self.rank, self.resumed, epoch + 1, step)
            poison = self.faults.poisons(epoch + 1, step, self.state.rollbacks)
            outcome = self.stepper.step(epoch, step, x, y, epoch + step / spe, poison, step + 1 == spe,
                                        lambda first: self._batches(epoch, first))
            if outcome is None:  # the window is still open
                continue
            for done, loss in outcome.losses:
                self.state.loss_sum, self.state.step = self.state.loss_sum + loss, done + 1
            self.state.add_grad_norms(outcome.grad_norms)
            self.stop_requested = outcome.stop
            if outcome.losses:
                images = (self.state.step - start) * self.cfg.data.batch_size
                bar.set_postfix(loss=f"{outcome.losses[-1][1]:.3f}", img_s=f"{images / (time.perf_counter() - t0):.0f}")
                bar.update(len(outcome.losses))
            if outcome.diverged or (outcome.stop and self.state.step < spe):
                bar.close()
                return Stopped(RunStatus.DIVERGED, outcome.diverged) if outcome.diverged \
                    else Stopped(RunStatus.PREEMPTED)
        bar.close()
        seconds = time.perf_counter() - t0
        return dict(train_loss=self.state.loss_sum / spe, **self.state.grad_norm_stats(), epoch_time_s=seconds,
                    images_per_s=(spe - start) * self.cfg.data.batch_size / seconds,
                    margin=self.head_module.margin_now(epoch + 1), lr=self.opt_net.param_groups[0]["lr"])

    def evaluate(self) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Metrics on the whole gathered test set by the head's prediction rule (computed on every rank; only the
        main one writes). With data.train_classes, the closed-set figures are of the seen classes' test images and
        the unseen ones are judged by arcdist.evaluation.openset; the features and labels returned hold every class."""
        with self.clock("evaluation"):
            feats, labels = self.features(self.test_data)
            closed, rows = (feats, labels) if self.seen is None else self.seen.closed_set(feats, labels)
            head = self.head_module
            geometry = head.geometry()
            with torch.no_grad():
                metrics = separation_metrics(closed, rows, geometry["W"], geometry.get("b"),
                                             scores=head.predict(closed))
            metrics["feature_norm_mean"] = feats.norm(dim=1).mean().item()
            if self.seen is not None:
                metrics["worst_class"] = int(self.seen.labels[metrics["worst_class"]])
        if self.acc.is_main_process and (self.cfg.train.retrieval or self.seen is not None):
            with self.clock("retrieval"):
                if self.cfg.train.retrieval:
                    metrics.update(retrieval_metrics(closed, rows, by=head.judged_by))
                if self.seen is not None:
                    metrics.update(unseen_metrics(feats, labels, geometry["W"], self.seen, head.judged_by,
                                                  self.cfg.train.retrieval))
        return metrics, feats, labels


    @property
    def eval_model(self) -> torch.nn.Module:
        """The backbone that embeds for evaluation and plots: the trained one, or its average with train.ema."""
        return self.acc.unwrap_model(self.backbone) if self.ema is None else self.ema.module

    def features(self, data: DeviceData) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D features and labels of all of `data`, each row once, on every rank (by the average with train.ema)."""
        return gather_features(self.acc, self.eval_model, data, self.cfg.model.feature_dim,
                               self.cfg.train.eval_batch_size)

    def model_info(self) -> dict:
        """Parameters (backbone + head) and forward FLOPs per image, for summaries and reports."""
        info = describe(self.cfg.model)
        return dict(params=info["params"] + param_count(self.cfg.head, self.cfg.model.feature_dim),
                    flops=info["flops"])

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        checkpoint.save_checkpoint(self.acc, self.run_dir, self.state.epoch, self.state.state_dict(),
                                   self.cfg.train.keep_checkpoints)

    def resume(self) -> None:
        """Continue from the folder's newest checkpoint that verifies (rundir.claim found one; failed ones are moved
        aside), with its metrics rows."""
        state, path = checkpoint.resume_checkpoint(self.acc, self.run_dir)
        self.state.load_state_dict(state)
        self.state.status = RunStatus.RUNNING
        self.resumed = True
        if self.acc.is_main_process:
            runinfo.truncate_metrics(self.run_dir, self.state.epoch, checkpoint.saved_metrics(path))

    def _stateful(self) -> list:
        """What a step changes: both models, optimizers and schedulers, the average (train.ema), the fp16 scaler."""
        found = [self.backbone, self.head, self.opt_net, self.opt_head, self.sched_net, self.sched_head, self.ema,
                 self.acc.scaler]
        return [obj for obj in found if obj is not None]

    def rollback(self) -> None:
        """Restore the last checkpoint with both learning rates halved (--set train.on_diverge=rollback); before the
        first checkpoint, the state the run started from (kept in memory by `fit`)."""
        rollbacks, path = self.state.rollbacks + 1, checkpoint.latest_checkpoint(self.run_dir)
        if path is not None:
            self.state.load_state_dict(checkpoint.load_checkpoint(self.acc, path))
        else:  # the steps of the epoch before the bad one were applied: back to the start, not on top of them
            for obj, saved in zip(self._stateful(), self._start):
                obj.load_state_dict(copy.deepcopy(saved))
            self.state.step, self.state.loss_sum, self.state.lr_scale = 0, 0.0, 1.0
        factor = 0.5 ** rollbacks / self.state.lr_scale  # the checkpoint's lrs already carry its lr_scale
        for opt in (self.opt_net, self.opt_head):
            for group in opt.param_groups:
                group["lr"] *= factor
        for sched in (self.sched_net, self.sched_head):
            sched.scheduler.base_lrs = [lr * factor for lr in sched.scheduler.base_lrs]
        self.state.rollbacks, self.state.lr_scale, self.state.status = rollbacks, 0.5 ** rollbacks, RunStatus.RUNNING

    # -- the whole run -----------------------------------------------------------------------------
    def fit(self, plot_every: int = 1) -> TrainState:
        """Train until cfg.train.epochs, a preemption or a divergence; returns the state."""
        if self.cfg.train.on_diverge == "rollback" and checkpoint.latest_checkpoint(self.run_dir) is None:
            self._start = copy.deepcopy([obj.state_dict() for obj in self._stateful()])  # what rollback restores
        if self.state.epoch >= self.cfg.train.epochs:  # a resume of a finished run, --epochs not above it
            self.acc.print(f"arcdist: {self.run_dir} has trained {self.state.epoch} epochs, --epochs asks for "
                           f"{self.cfg.train.epochs}: nothing to train (--epochs {self.state.epoch + 1} or more trains on)")
        while self.state.epoch < self.cfg.train.epochs:
            epoch = self.state.epoch
            result = self.train_epoch(epoch)
            if not isinstance(result, Stopped):
                self.clock.add("train", result["epoch_time_s"])
                self.end_epoch(epoch, result, plot_every)
            elif result.status == RunStatus.PREEMPTED:
                self.state.status = RunStatus.PREEMPTED
                self.checkpoint()  # mid-epoch: (epoch, step, loss_sum) let resume replay the rest exactly
                if self.acc.is_main_process:
                    self.recorder.summary(self.state.state_dict(), self.model_info())
                    self.stop_file.unlink(missing_ok=True)
                return self.state
            elif self.cfg.train.on_diverge == "rollback" and self.state.rollbacks < self.cfg.train.max_rollbacks:
                self.acc.print(f"diverged at {result.where}; rolling back with halved learning rates")
                self.rollback()
            else:
                self.state.status, self.state.diverged = RunStatus.DIVERGED, result.where
                self.recorder.diverged(epoch + 1, result.where)
                break
        if self.state.status == RunStatus.RUNNING:
            self.state.status = RunStatus.FINISHED
        if self.acc.is_main_process:
            self.recorder.finish(self.state.state_dict(), dict(self.model_info(), time_s=self.clock.seconds()),
                                 gif=bool(plot_every))
            self.acc.print("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.clock.seconds().items()))
        return self.state

    def end_epoch(self, epoch: int, stats: dict, plot_every: int) -> None:
        """Evaluate on all ranks' data, record metrics, features and plots, checkpoint."""
        metrics, feats, labels = self.evaluate()
        self.state.epoch, self.state.step, self.state.loss_sum = epoch + 1, 0, 0.0
        self.state.grad_norm_sum, self.state.grad_norm_max, self.state.grad_norm_steps = 0.0, 0.0, 0
        record = dict(epoch=epoch + 1, **stats, **{("test_" + k if k == "accuracy" else k): v for k, v in metrics.items()})
        if metrics["accuracy"] > self.state.best_accuracy:
            self.state.best_accuracy, self.state.best_epoch = metrics["accuracy"], epoch + 1
        want_plots = plot_every and ((epoch + 1) % plot_every == 0 or epoch + 1 == self.cfg.train.epochs)
        features = dict(test=(feats, labels))
        if want_plots:
            with self.clock("train_sample"):
                sample, rows = self.features(self.train_sample)  # a collective: all ranks
                features["train"] = (sample, rows if self.seen is None else self.seen.labels[rows.cpu()])
        head = self.head_module
        geometry = head.geometry() if self.seen is None else dict(head.geometry(), rows=self.seen.labels)
        with self.clock("files_plots_wandb"):
            self.recorder.end_epoch(record, features, geometry, head.wedge(epoch + 1), head.caption(epoch + 1),
                                    self.cfg.train.epochs, plots=bool(want_plots))
        with self.clock("checkpoint"):
            self.checkpoint()
