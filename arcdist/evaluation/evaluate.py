"""Evaluate a run's checkpoint again, plain and averaged over pixel shifts:

    arcdist evaluate RUN_DIR [--shift 1] [--checkpoint epoch-0020] [--json FILE]
    arcdist evaluate RUN_DIR --pairs 6000 [--pairs-out pairs.npz]     # verification (arcdist.evaluation.verification)

Loads the newest checkpoint that verifies (or the one named) into the run's own model and precision, embeds the
whole test set, and prints the metrics of the training's own evaluation (accuracy by the head's prediction rule,
intra-class spread, closest class centres) twice: for the plain images, and with each image's 2-D feature the mean of
its (2k+1)² views moved by up to k = --shift pixels (test-time averaging over the shifts `data.shift` trains on).
Reads only: nothing in RUN_DIR changes (a checkpoint that fails its checksums is refused in one line, not moved).
With --pairs N: N seeded pairs of the test split (half of one class), their cosine scores, 10-fold accuracy with each
fold's threshold fitted on the other nine, ROC AUC, TAR at FAR 1e-3 and 1e-2 and the threshold to use; the pairs
and scores go to --pairs-out (`i`, `j` indices into the split's order, `same`, `score`), the figures to the JSON
beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from accelerate import PartialState

from arcdist import checkpoint, errors, fingerprint, rundir, runinfo
from arcdist.cli import ArgumentParser
from arcdist.config import ConfigError
from arcdist.data import run_data_dir
from arcdist.errors import Exit
from arcdist.evaluation import verification
from arcdist.evaluation.gather import shifted_features
from arcdist.hardware import setup_accelerator
from arcdist.evaluation.metrics import separation_metrics
from arcdist.trainer import Trainer

REPORTED = ("accuracy", "intra_spread_deg", "min_centre_angle_deg")
SHOWN = (("intra_spread_deg", "intra spread", ".2f"), ("min_centre_angle_deg", "closest centres", ".1f"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist evaluate", description=__doc__)
    p.add_argument("run_dir", help="a run folder (with config.json and checkpoints/)")
    p.add_argument("--shift", type=int, default=1, metavar="PIXELS",
                   help="average each test feature over the image moved by up to PIXELS in each direction "
                        "(default 1: 9 views; 0: plain only)")
    p.add_argument("--checkpoint", default=None, metavar="NAME",
                   help="the checkpoint to evaluate: its folder or epoch, e.g. epoch-0020 or 20 (default: the newest)")
    p.add_argument("--data-dir", default=None, help="where the dataset is (default: the run's recorded folder while it "
                                                     "exists, else $ARCDIST_DATA_DIR)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE (JSON)")
    p.add_argument("--pairs", type=int, default=0, metavar="N", help="verification on N seeded test pairs")
    p.add_argument("--pairs-out", default="pairs.npz", metavar="FILE",
                   help="where the pairs and scores go (default ./pairs.npz; the figures beside it as .json)")
    p.add_argument("--pairs-seed", type=int, default=0, help="the seed that draws the pairs")
    args = p.parse_args(argv)
    if not 0 <= args.shift <= 4:
        p.error(f"--shift {args.shift}: give 0 to 4 pixels")
    if args.pairs and args.pairs < 20:
        p.error(f"--pairs {args.pairs}: give at least 20 (10 folds of 2)")
    return args


def choose_checkpoint(run_dir: Path, name: str | None) -> Path:
    """The named checkpoint folder, or the newest; ConfigError when there is none or it fails its checksums."""
    found = checkpoint.list_checkpoints(run_dir)
    if name is not None:  # epoch-0006, epoch-6, 6 or checkpoints/epoch-0006: the same folder
        number = re.fullmatch(r"(?:epoch-)?(\d+)", Path(name).name)
        found = [p for p in found if (int(p.name.split("-")[1]) == int(number[1]) if number else p.name == name)]
        if not found:
            raise ConfigError(f"{run_dir} has no checkpoint {name}; pick one of checkpoints/epoch-*")
    elif not found:
        raise ConfigError(f"{run_dir} has no checkpoint; train it (or --resume it) first")
    path = found[-1]
    why = checkpoint.verify(path)
    if why is not None:
        raise ConfigError(f"checkpoint {path} fails its checksums ({why}); evaluate another with --checkpoint, "
                          f"or --resume the run (it moves this one aside)")
    return path


def evaluate(run_dir: Path, pixels: int = 1, name: str | None = None, data_dir: str | None = None,
             pairs: int = 0, pairs_seed: int = 0) -> dict:
    """The figures of one checkpoint: {"checkpoint", "epoch", "shift", "views", "plain": {...}, "averaged": {...}}."""
    cfg = rundir.load_saved_config(run_dir, flag="")
    cfg = replace(cfg, data=replace(cfg.data, data_dir=run_data_dir(cfg.data.data_dir, data_dir), download=False))
    path = choose_checkpoint(run_dir, name)
    cfg, acc, _ = setup_accelerator(cfg)
    trainer = Trainer(cfg, run_dir, acc, no_progress=True)
    fingerprint.check(run_dir, fingerprint.of_splits(trainer.train_data, trainer.test_data), "arcdist evaluate",
                      "pass --data-dir with the data this run was trained on")
    state = checkpoint.load_checkpoint(acc, path)
    geometry = trainer.head_module.geometry()
    out = dict(checkpoint=str(path), epoch=state.get("epoch"), shift=pixels, views=(2 * pixels + 1) ** 2,
               test_images=len(trainer.test_data))
    views, labels = shifted_features(acc, trainer.eval_model, trainer.test_data, cfg.model.feature_dim,
                                     cfg.train.eval_batch_size, pixels)
    # the mean of the features, not of their directions: a view the net is sure of (a long feature) counts more
    for key, feats in (("plain", views[0]), ("averaged", views.mean(0))):
        # a run trained on some classes (data.train_classes) is judged by them: its head has no row for the others
        feats, rows = (feats, labels) if trainer.seen is None else trainer.seen.closed_set(feats, labels)
        with torch.no_grad():
            scores = trainer.head_module.predict(feats)
        metrics = separation_metrics(feats, rows, geometry["W"], geometry.get("b"), scores=scores)
        kept = {m: metrics[m] for m in REPORTED if m in metrics}
        out[key] = kept | dict(errors=round((1 - metrics["accuracy"]) * len(rows)), images=len(rows))
    if pairs:
        try:
            out["verification"], out["pairs"] = _verify(views[0].numpy(), labels.numpy(), np.arange(len(labels)),
                                                        pairs, pairs_seed)
        except ValueError as e:
            raise ConfigError(f"--pairs: the test split's {len(labels):,} images cannot make pairs ({e}); evaluate "
                              "a run whose test split holds at least two classes and two images of one") from None
        if trainer.seen is not None:  # the same protocol among the classes the run never trained on
            away = np.flatnonzero(trainer.seen.rows(labels).numpy() < 0)
            try:
                out["verification_unseen"], _ = _verify(views[0].numpy(), labels.numpy(), away, pairs, pairs_seed)
            except ValueError as e:
                out["verification_unseen_skipped"] = f"the unseen classes' {len(away):,} test images: {e}"
    return out


def _verify(features: np.ndarray, labels: np.ndarray, among: np.ndarray, n: int, seed: int) -> tuple[dict, dict]:
    """Verification figures of `n` seeded pairs drawn among the images `among` (indices into the split), and the
    pairs (`i`, `j` into the split, `same`, `score`)."""
    i, j, same = verification.make_pairs(labels[among], n, seed)
    i, j = among[i], among[j]
    scores = verification.cosine_scores(features, i, j)
    distinct = len({(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())})
    return verification.verify(scores, same) | dict(seed=seed, distinct_pairs=distinct), \
        dict(i=i, j=j, same=same, score=scores)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(Path(args.run_dir), args.shift, args.checkpoint, args.data_dir, args.pairs, args.pairs_seed)
        if not PartialState().is_main_process:  # under a launcher every rank embeds its shard; one reports
            return Exit.OK
        pairs = result.pop("pairs", None)
        if pairs is not None:
            out = Path(args.pairs_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out.with_name(f".{out.stem}.tmp.npz"), **pairs)
            os.replace(out.with_name(f".{out.stem}.tmp.npz"), out)
            figures = dict(result["verification"], **({"unseen": result["verification_unseen"]}
                                                      if "verification_unseen" in result else {}))
            runinfo.atomic_write(out.with_suffix(".json"), json.dumps(figures, indent=1) + "\n")
        if args.json:
            runinfo.atomic_write(Path(args.json), json.dumps(result, indent=1) + "\n")
    except errors.BadInput as e:
        print(f"arcdist evaluate: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    except OSError as e:
        print(f"arcdist evaluate: error: {e}; check the path and that it is writable", file=sys.stderr)
        return Exit.BAD_INPUT
    for key in ("plain", "averaged") if result["shift"] else ("plain",):  # --shift 0: the one view is the plain one
        m = result[key]
        what = "plain" if key == "plain" else f"averaged over {result['views']} shifts (up to {result['shift']} px)"
        print(f"epoch {result['epoch']}, {what}: test accuracy {100 * m['accuracy']:.2f} % ({m['errors']} errors in "
              f"{m['images']:,})" + "".join(f", {name} {m[key]:{form}} deg" for key, name, form in SHOWN if key in m))
    if "verification_unseen_skipped" in result:
        print(f"verification, unseen classes: skipped ({result['verification_unseen_skipped']})")
    for key, what in (("verification", "verification"), ("verification_unseen", "verification, unseen classes")):
        if key not in result:
            continue
        v = result[key]
        if v["distinct_pairs"] < v["pairs"]:  # a small test split: the same pair is drawn again and lands in
            # several folds, so a fold's threshold has seen the pairs it is judged on
            print(f"{what}: only {v['distinct_pairs']:,} of the {v['pairs']:,} pairs differ (a small test split); "
                  "the 10-fold figures are optimistic: ask for fewer --pairs")
        print(f"{what}, {v['pairs']:,} pairs: accuracy {100 * v['accuracy']:.2f} ± {100 * v['accuracy_std']:.2f} % "
              f"(10 folds), ROC AUC {v['roc_auc']:.4f}, TAR {100 * v['tar_at_far_0.001']:.2f} % at FAR 1e-3, "
              f"{100 * v['tar_at_far_0.01']:.2f} % at FAR 1e-2, threshold {v['threshold']:.4f} (cosine)")
    return Exit.OK


if __name__ == "__main__":
    errors.end_process(main())
