"""One optimisation step, guarded, and the window of steps between two host reads.

A step is applied only when its loss, features and gradients are finite on every rank; a stop request (signal,
Ctrl-C, stop file) travels with the same all-reduce, so all ranks stop at the same step. With
train.sync_every = K > 1 the flags of K steps are read back at once (one synchronisation with the device): a
window is applied step by step without reading, and if any of its steps was non-finite it is undone from a
snapshot and replayed read-by-read, which reports the first bad step exactly as K = 1 does.

With train.clip_grad_norm = c > 0 the gradients of backbone and head together are scaled by min(1, c / norm) before
the optimizers step (the norm is computed once per step, the one that also tests the gradients for finiteness);
under fp16 they are unscaled first. Each step's norm (before clipping) travels with the flags.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterable

import torch
from accelerate import Accelerator

SYNC_EVERY_ACCELERATOR = 50  # train.sync_every=0 on a GPU: one host read per 50 steps


@dataclass(frozen=True)
class StepModels:
    """What a step changes, Accelerate-prepared: the models, both optimizers and their schedules (backbone's first,
    head's second), and the backbone's average (train.ema) or None."""

    backbone: torch.nn.Module
    head: torch.nn.Module
    optimizers: tuple
    schedulers: tuple
    ema: torch.nn.Module | None = None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class StepSettings:
    """How the steps are taken: `every` steps per host read (train.sync_every resolved, see sync_every),
    `clip_grad_norm` (train.clip_grad_norm; 0 = off), whether the head has trainable parameters, and the rank's
    stop request (read with each host read)."""

    every: int = 1
    clip_grad_norm: float = 0.0
    head_trains: bool = True
    stop_wanted: Callable[[], bool] = _never


@dataclass
class Flags:
    """One step's checks: its loss, whether loss, features or gradients were non-finite, and the total gradient
    norm before clipping. On the device they are a tensor in this field order (summed over ranks by the
    all-reduce); `read` names them again, the loss and the norm divided by the ranks (the norm is the same on
    every rank: the gradients were all-reduced by the backward)."""

    loss: float
    loss_nonfinite: float
    features_nonfinite: float
    gradients_nonfinite: float
    grad_norm: float

    SIZE = 5

    @classmethod
    def read(cls, values: list[float], world: int) -> "Flags":
        flags = cls(*values[:cls.SIZE])
        return replace(flags, loss=flags.loss / world, grad_norm=flags.grad_norm / world)

    def bad(self, check_gradients: bool) -> list[str]:
        """The names of the non-finite tensors (gradients not under fp16: there an overflow is the scaler's)."""
        checks = dict(loss=self.loss_nonfinite, features=self.features_nonfinite)
        if check_gradients:
            checks["gradients"] = self.gradients_nonfinite
        return [name for name, v in checks.items() if v > 0]


assert Flags.SIZE == len(fields(Flags))


@dataclass
class Outcome:
    """What the steps read back since the last outcome came to: each applied step's (index, global mean loss), in
    order, and its total gradient norm before clipping (`grad_norms`, in the same order; under fp16 of the unscaled
    gradients, non-finite where the scaler skipped the step); the first non-finite step (diverged: epoch, step,
    tensors), which was not applied; whether a stop was requested on any rank."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    diverged: dict | None = None
    stop: bool = False


class Stepper:
    """Forward, backward and both optimizer steps for the trainer's models (Accelerate-prepared)."""

    def __init__(self, acc: Accelerator, models: StepModels, settings: StepSettings = StepSettings()):
        self.acc, self.models, self.settings = acc, models, settings
        self.backbone, self.head, self.ema = models.backbone, models.head, models.ema
        self.optimizers, self.schedulers = models.optimizers, models.schedulers
        self.window: list[tuple[int, float, bool, torch.Tensor]] = []  # (step, epoch progress, poison, flags)
        self.snapshot: dict | None = None

    @property
    def every(self) -> int:
        """Steps per host read of the flags."""
        return self.settings.every

    def _parameters(self) -> list[torch.Tensor]:
        return [*self.backbone.parameters(), *self.head.parameters()]

    # -- the step ------------------------------------------------------------------------------------
    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, at: float, poison: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward at `at` epochs (the head's margin schedule): this rank's Flags, unread, and the
        total gradient norm (unscaled under fp16) on the device. `poison` (tests only, through Faults) makes the
        loss NaN, as a real divergence would."""
        with self.acc.autocast():
            features = self.backbone(x)
        head = self.acc.unwrap_model(self.head)
        loss = head.loss(self.head(features, y, at), features, y)
        if poison:
            loss = loss * float("nan")
        self.acc.backward(loss)
        grads = [p.grad for p in self._parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)  # non-finite stays non-finite (no error raised)
        if self.acc.scaler is not None:
            # the scaled gradients' norm over the (power-of-two) scale is the unscaled one; unscaling here instead
            # could not be undone for a step that is then not applied (the scaler allows one unscale_ per update)
            grad_norm = grad_norm / self.acc.scaler.get_scale()
        flags = torch.stack([loss.detach().float(), (~torch.isfinite(loss)).float(),
                             (~torch.isfinite(features).all()).float(), (~torch.isfinite(grad_norm)).float(),
                             grad_norm.detach().float()])
        return flags, grad_norm

    def _clip(self, grad_norm: torch.Tensor) -> None:
        """Scale the (unscaled) gradients by min(1, clip_grad_norm / grad_norm), as clip_grad_norm_ does."""
        torch.nn.utils.clip_grads_with_norm_(self._parameters(), self.settings.clip_grad_norm, grad_norm)

    def _apply(self, grad_norm: torch.Tensor) -> None:
        """Clipping (train.clip_grad_norm), both optimizer steps, then the schedules and the average (unless fp16's
        scaler skipped the step). `grad_norm`: the step's total gradient norm, unscaled."""
        overflow, clip = False, self.settings.clip_grad_norm > 0
        scaler = self.acc.scaler
        if scaler is not None:
            # one scale update per step for both optimizers: Accelerate's optimizer.step() updates it after
            # each, so after an overflow the head would be unscaled with the already halved scale
            scale = scaler.get_scale()
            stepping = self.optimizers if self.settings.head_trains else self.optimizers[:1]
            if clip:
                for opt in stepping:  # scaler.step then sees them unscaled and does not unscale again
                    scaler.unscale_(opt.optimizer)
                self._clip(grad_norm)  # (after an overflow non-finite: the steps are skipped anyway)
            for opt in stepping:
                scaler.step(opt.optimizer)  # (the scaler refuses an optimizer without gradients)
            scaler.update()
            overflow = scaler.get_scale() < scale  # the scale only drops when the steps were skipped
        else:
            if clip:
                self._clip(grad_norm)
            for opt in self.optimizers:
                opt.step()
        if not overflow:  # as Accelerate does: a skipped step advances neither the schedule nor the average
            self.acc.unwrap_model(self.head).after_step()  # the center rule moves the centers (others: nothing)
            for sched in self.schedulers:
                sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.acc.unwrap_model(self.backbone))
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _reduce(self, flags: torch.Tensor) -> list[float]:
        """Flags and this rank's stop request, summed over ranks: the one host read."""
        stop = float(self.settings.stop_wanted())
        packed = torch.cat([flags.flatten(), torch.tensor([stop], device=flags.device)])
        if self.acc.num_processes > 1:
            packed = self.acc.reduce(packed, reduction="sum")
        return packed.tolist()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, at: float, poison: bool = False
                   ) -> tuple[float, list[str], bool]:
        """One step read back at once: (global mean loss, non-finite tensors, stop requested). Nothing is applied
        when a tensor was non-finite on any rank."""
        flags, bad, stop = self._read_step(x, y, at, poison)
        return flags.loss, bad, stop

    def _read_step(self, x: torch.Tensor, y: torch.Tensor, at: float, poison: bool
                   ) -> tuple[Flags, list[str], bool]:
        """train_step with the whole Flags."""
        flags, grad_norm = self._forward_backward(x, y, at, poison)
        values = self._reduce(flags)
        read = Flags.read(values, self.acc.num_processes)
        bad = read.bad(check_gradients=self.acc.scaler is None)
        if bad:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
        else:
            self._apply(grad_norm)
        return read, bad, values[-1] > 0

    # -- the window ----------------------------------------------------------------------------------
    def step(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, at: float, poison: bool, last: bool,
             replay: Callable[[int], Iterable]) -> Outcome | None:
        """Take step `step` of `epoch` (0-based); the Outcome when its flags were read back (every `every`
        steps and at the epoch's `last` step), else None. `replay(start)` gives the epoch's batches again from
        step `start` (a window with a bad step is replayed from its snapshot)."""
        if self.every == 1:
            return self._checked(epoch, step, x, y, at, poison)
        if not self.window:
            self.snapshot = self._snapshot()
        flags, grad_norm = self._forward_backward(x, y, at, poison)
        self.window.append((step, at, poison, flags))
        self._apply(grad_norm)  # (never under fp16: its scaler reads its overflow flag each step, so every is 1)
        if len(self.window) < self.every and not last:
            return None
        window, self.window = self.window, []
        values = self._reduce(torch.stack([w[3] for w in window]))
        rows = [Flags.read(values[Flags.SIZE * i:], self.acc.num_processes) for i in range(len(window))]
        if any(row.bad(check_gradients=True) for row in rows):
            return self._replay(epoch, window, replay)
        return Outcome(losses=[(s, row.loss) for (s, *_), row in zip(window, rows)],
                       grad_norms=[row.grad_norm for row in rows], stop=values[-1] > 0)

    def _checked(self, epoch: int, step: int, x, y, at: float, poison: bool) -> Outcome:
        flags, bad, stop = self._read_step(x, y, at, poison)
        if bad:
            return Outcome(diverged=dict(epoch=epoch + 1, step=step, tensors=bad), stop=stop)
        return Outcome(losses=[(step, flags.loss)], grad_norms=[flags.grad_norm], stop=stop)

    def _replay(self, epoch: int, window: list, replay: Callable[[int], Iterable]) -> Outcome:
        """Undo the window (later steps ran on the bad weights too) and take it again read by read, up to the
        first bad step or a stop request."""
        self._restore(self.snapshot)
        done = Outcome()
        for (step, at, poison, _), (x, y) in zip(window, replay(window[0][0])):
            one = self._checked(epoch, step, x, y, at, poison)
            done.losses += one.losses
            done.grad_norms += one.grad_norms
            done.diverged, done.stop = one.diverged, one.stop
            if one.diverged or one.stop:
                break
        return done  # (replayed finite: a device's nondeterministic kernels; the replay's steps stand)

    def state_modules(self) -> list[torch.nn.Module]:
        """The modules a step changes: backbone, head and the average (unwrapped)."""
        modules = [self.acc.unwrap_model(self.backbone), self.acc.unwrap_model(self.head)]
        return modules + ([self.acc.unwrap_model(self.ema)] if self.ema is not None else [])

    def _snapshot(self) -> dict:
        """Everything a step changes, copied on the device (nothing read back): the models' parameters and
        buffers (BatchNorm statistics), the average, the optimizers' and schedules' states."""
        return dict(modules=[{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.state_modules()],
                    optimizers=[copy.deepcopy(o.optimizer.state_dict()) for o in self.optimizers],
                    schedulers=[copy.deepcopy(s.scheduler.state_dict()) for s in self.schedulers])

    def _restore(self, snapshot: dict) -> None:
        for module, state in zip(self.state_modules(), snapshot["modules"]):
            module.load_state_dict(state)  # in place: DDP and the optimizers keep their parameter objects
        for opt, state in zip(self.optimizers, snapshot["optimizers"]):
            opt.optimizer.load_state_dict(state)
        for sched, state in zip(self.schedulers, snapshot["schedulers"]):
            sched.scheduler.load_state_dict(state)


def sync_every(acc: Accelerator, configured: int) -> int:
    """Steps between reads of the flags (train.sync_every; 0: 1 on a CPU, SYNC_EVERY_ACCELERATOR on a GPU).
    1 under fp16: the loss scaler reads its overflow flag back every step anyway."""
    if acc.scaler is not None:
        return 1
    return configured if configured > 0 else (1 if acc.device.type == "cpu" else SYNC_EVERY_ACCELERATOR)
