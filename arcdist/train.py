"""The training job: `accelerate launch arcdist/train.py [--variant A8] ...`.

One code path for one CPU process, gloo DDP on CPU, and one or many GPUs (NCCL, AMP). This is the entry: parse,
config, accelerator, the run folder, fit, exit status. The loop is arcdist.trainer, the step arcdist.step, the
run folder arcdist.rundir, the exit statuses arcdist.errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `accelerate launch arcdist/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arcdist import checkpoint, cluster, errors, fingerprint, preempt, rundir, runinfo, shape, tracking, wandb_report
from arcdist.cli import ArgumentParser
from arcdist.config import Config, ConfigError, apply_overrides, validate
from arcdist.data import resolve_data_dir, run_data_dir
from arcdist.datasets import dataset_class, normalization
from arcdist.errors import Exit
from arcdist.faults import Faults
from arcdist.hardware import configure_cpu, setup_accelerator
from arcdist.model import describe
from arcdist.status import RunStatus
from arcdist.trainer import Trainer, TrainState
from arcdist.variants import MAIN_VARIANT, default_variant, get_variant

__all__ = ["Faults", "Trainer", "TrainState", "build_config", "configure_cpu", "main", "parse_args", "run",
           "setup_accelerator"]


@dataclass
class Where:
    """What main() names in its one-line errors, filled in by run() as it learns them."""
    run_dir: Path | str = "RUN_DIR"
    timeout: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist.train", description=__doc__, name="arcdist")
    p.add_argument("--variant", default=None, help=f"variant name (default {MAIN_VARIANT}, the main job); see python -m arcdist.variants")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default: the variant's: A8 6, the post's V0-V2.1 100)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default=None,
                   help="autocast (default: the variant's, auto = chosen for this machine)")
    p.add_argument("--dataset", default=None, help="mnist (default), fashion-mnist, cifar10, or folder: your own "
                   "images in DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/*, or DATA_DIR/<class>/* (a "
                   "share of each class held out: data.test_fraction)")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/ (default $ARCDIST_DATA_DIR or ./data); "
                   "with --dataset folder, the folder holding train/ and test/")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/<variant>-s<seed>)")
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set head.margin=0.3 (repeatable)")
    p.add_argument("--sweep-set", dest="sweep_sets", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="what `arcdist grid --sweep` passes: a --set (applied after the others) that also names "
                        "the run's grid row in W&B (run name, config `row` and `sweep`)")
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
    args.overrides = [*args.overrides, *args.sweep_sets]
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
    launcher = cluster.current().launcher.mixed_precision
    precision = args.mixed_precision or (launcher if launcher in ("fp16", "bf16") and not saved else None)
    flags = {"train.epochs": args.epochs, "train.seed": args.seed, "train.mixed_precision": precision,
             "data.dataset": args.dataset, "data.limit_train": args.limit_train, "data.limit_test": args.limit_test,
             "train.cpu": True if args.cpu else None}
    typed = dict(flags, **{"train.mixed_precision": args.mixed_precision})  # (not the launcher's)
    for item in args.overrides:  # which of two values won was silent (the --set)
        key = item.partition("=")[0].strip()
        if typed.get(key) is not None:
            flag = {"train.cpu": "--cpu"}.get(key, "--" + key.split(".")[1].replace("_", "-"))
            raise ConfigError(f"--set {item}: {flag} gives {key} too; give it once")
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = apply_overrides(cfg, overrides)
    # a resume reads the folder the run recorded (run_data_dir: as evaluate and embed do)
    data_dir = resolve_data_dir(args.data_dir) if saved is None else run_data_dir(saved.data.data_dir, args.data_dir)
    if saved is not None and not args.data_dir and data_dir == saved.data.data_dir:
        if not Path(data_dir).is_dir():
            raise ConfigError(f"--resume: the run's data folder {data_dir} is gone; pass --data-dir DIR "
                              f"(or set ARCDIST_DATA_DIR) with the dataset's files")
    else:
        data_dir = str(Path(data_dir).absolute())  # recorded absolute: resumable anywhere
    cfg = replace(cfg, data=replace(cfg.data, data_dir=data_dir))
    if saved is not None:
        changed = {k for k in ("model", "head", "optim") if getattr(cfg, k) != getattr(saved, k)}
        if (changed or cfg.train.seed != saved.train.seed or max(1, cfg.data.repeats) != max(1, saved.data.repeats)
                or any(getattr(cfg.data, k) != getattr(saved.data, k)
                       for k in ("dataset", "normalize", "test_fraction", "batch_size", "limit_train", "limit_test"))):
            raise ConfigError("--resume: only --epochs and --data-dir may change on resume; start a new run instead")
    if saved is None:  # the data's files are checked, and what a run records of them measured (a folder's classes,
        # mean, std), before the precision probe and before anything is written; the data decides the shape
        explicit = shape.explicit_keys(overrides)
        cfg = shape.fit_model(cfg, explicit)
        cfg = replace(cfg, data=dataset_class(cfg.data.dataset).settle(cfg.data, cfg.model))
        cfg = replace(cfg, data=replace(cfg.data, normalize=normalization(cfg.data)))
        cfg = shape.fit_head(cfg, explicit, get_variant(cfg.variant).config.data.dataset)
        cfg = shape.fit_batch(cfg, explicit, cluster.current().world_size)
    elif cfg.data.dataset != "folder":  # (a folder is checked file by file when the run loads it)
        dataset_class(cfg.data.dataset)(cfg.data.data_dir, download=False).check()
    describe(cfg.model)  # shape check of the layer list
    validate(cfg)
    return cfg


def run(argv: list[str] | None = None, where: Where | None = None) -> int:
    """Parse arguments, build everything, train; returns the exit status. Raises ConfigError on bad input.
    `where` learns the run folder and the collective timeout for the caller's error lines."""
    where = where or Where()
    preempt.install_handlers()
    preempt.die_with_launcher()
    args = parse_args(argv)
    run_dir, saved = rundir.locate(args)  # reads only: bad input leaves the disk as it was
    cfg = build_config(args, saved)
    if saved is not None and not args.sweep_sets:  # a resume by hand keeps the grid row the run was started in
        args.sweep_sets = list(json.loads((run_dir / runinfo.CONFIG).read_text()).get("sweep") or [])
    where.run_dir, where.timeout = run_dir, cfg.train.collective_timeout_s
    mode = tracking.resolve_mode(args.wandb)
    cfg, accelerator, choice = setup_accelerator(cfg, log_with=None if mode == "disabled" else "wandb")
    for note in [getattr(args, "default_note", None), *shape.notes(cfg, accelerator.num_processes)]:
        if note:
            accelerator.print(note)
    no_progress = args.no_progress or not sys.stderr.isatty()  # no bar in log files
    try:  # from here on every way out destroys the process group (errors.end_process)
        new_run = saved is None or checkpoint.latest_checkpoint(run_dir) is None  # (claim decides it under the lock)
        trainer = Trainer(cfg, run_dir, accelerator, no_progress=no_progress,  # checks data before writing anything
                          new_run=new_run)
        data_id = fingerprint.of_splits(trainer.train_data, trainer.test_data)
        # a run with no checkpoint trains again from epoch 1 (claim), so it may meet other data: say a streamed
        # image that failed to decode in its first epoch, mended since; it records this data's fingerprint anew
        recorded = saved is not None and not new_run and fingerprint.check(
            run_dir, data_id, "--resume", "point --data-dir at the data this run was trained on, or start a new "
            "run with another --output-dir", warn=accelerator.is_main_process)
        if rundir.claim(run_dir, accelerator, cfg, resume=saved is not None, lock_wait=args.lock_wait,
                        launch=dict(world_size=accelerator.num_processes, argv=sys.argv if argv is None else argv,
                                    distributed_type=str(accelerator.distributed_type),
                                    device=str(accelerator.device), precision=choice.to_dict(),
                                    sweep=args.sweep_sets,
                                    **{fingerprint.KEY: data_id})):
            trainer.resume()
            if not recorded and accelerator.is_main_process:  # a run from before fingerprints: record it now
                runinfo.update_config(run_dir, **{fingerprint.KEY: data_id})
        if mode != "disabled":
            trainer.state.wandb_id = trainer.state.wandb_id or runinfo.new_run_id()
            tracking.init_wandb(accelerator, mode, run_dir, trainer.state.wandb_id,
                                name="-".join([cfg.variant, *args.sweep_sets, f"s{cfg.train.seed}"]),
                                config=dict(cfg.to_dict(), precision=choice.to_dict(), sweep=args.sweep_sets,
                                            row=wandb_report.row_name(cfg.variant, cfg.data.dataset,
                                                                      args.sweep_sets)), group=args.group,
                                job_type="train", tags=[cfg.variant, cfg.data.dataset])
        state = trainer.fit(plot_every=args.plot_every)
    finally:
        accelerator.end_training()
    if state.status != RunStatus.PREEMPTED:
        return Exit.OK
    status = preempt.after_stop(run_dir, state.state_dict()) if accelerator.is_main_process else Exit.OK
    return status if preempt.interrupted() else Exit.OK


def main(argv: list[str] | None = None) -> int:
    """run(), its failures classified by type into one line and an exit status (arcdist.errors)."""
    where = Where()
    try:
        return run(argv, where)
    except errors.BadInput as e:
        errors.say_bad_input(f"arcdist: error: {e}")
        return Exit.BAD_INPUT
    except errors.WriteError as e:
        print(f"arcdist: error: {e}", file=sys.stderr)
        return Exit.WRITE_FAILED
    except OSError as e:  # a write outside the checked places (config.json, summary.json)
        if not errors.is_write_failure(e):
            raise
        print(f"arcdist: error: {checkpoint.write_error(e.filename or where.run_dir, e.strerror, where.run_dir)}",
              file=sys.stderr)
        return Exit.WRITE_FAILED
    except RuntimeError as e:
        if not errors.is_collective_failure(e):
            raise
        line = errors.collective_line(e, where.timeout, checkpoint.resume_advice(where.run_dir))
        print(f"arcdist: error: {line}", file=sys.stderr, flush=True)
        return Exit.LOST_CONTACT


if __name__ == "__main__":
    errors.end_process(main())
