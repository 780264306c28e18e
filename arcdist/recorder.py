"""What the main process writes while a run trains: metrics rows, features, plots, the W&B log and summary.

Every rank holds a Recorder (the write-failure agreement is a collective); only the main process writes.
Failures differ by what resume needs: a metrics row or features file that cannot be written stops every rank
(`errors.WriteError`, exit 3); plots and W&B are not worth stopping a run for (one warning per kind).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from arcdist import checkpoint, runinfo, tracking
from arcdist.status import RunStatus
from arcdist.config import first_line


STRICT_PLOTS = "ARCDIST_STRICT_PLOTS"


class Recorder:
    def __init__(self, run_dir: Path, accelerator: Accelerator):
        self.run_dir, self.acc = Path(run_dir), accelerator
        self.is_main = accelerator.is_main_process
        self.warned: set[str] = set()  # kinds of non-fatal failures already reported (plots, W&B)

    # -- per epoch (all ranks call these) --------------------------------------------------------
    def end_epoch(self, record: dict, features: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  geometry: dict[str, torch.Tensor], margin: float, caption: str, epochs: int,
                  plots: bool) -> None:
        """Append the epoch's metrics row and save its features (split -> (features, labels)) with the head's
        geometry (W; b and centers where the head has them), its angular margin and caption, then plots, the W&B
        log and the progress line. A row or features file that cannot be written raises WriteError on every rank."""
        epoch, error = record["epoch"], None
        if self.is_main:
            try:  # what resume needs (metrics are cut back on resume)
                runinfo.append_metrics(self.run_dir, record)
                for split, (feats, labels) in features.items():
                    self.save_features(epoch, split, feats, labels, geometry, margin, caption)
            except OSError as e:
                error = e
        failed = checkpoint.agree(self.acc, error, self.run_dir, self.run_dir)
        if failed:
            raise failed
        if self.is_main:
            self.log(record, epoch, self.render_plots(epoch) if plots else {},
                     dict(features=features["test"], geometry=geometry) if plots else None)
            self.acc.print(f"epoch {epoch}/{epochs}  loss {record['train_loss']:.4f}  "
                           f"grad norm {record['grad_norm_mean']:.3g} (max {record['grad_norm_max']:.3g})  "
                           f"test acc {record['test_accuracy']:.4f}  "
                           + "".join(f"{name} {record[key]:.1f} deg  " for key, name in
                                     (("intra_spread_deg", "spread"), ("min_centre_angle_deg", "min centre angle"))
                                     if key in record)
                           + (f"P@1 {record['precision_at_1']:.4f}  MAP@R {record['mean_average_precision_at_r']:.4f}  "
                              if "precision_at_1" in record else "") +
                           f"{record['images_per_s']:.0f} img/s")

    def diverged(self, epoch: int, where: dict) -> None:
        """The divergence row (metrics, W&B) and the one line that says where and in which tensors."""
        if self.is_main:
            runinfo.append_metrics(self.run_dir, dict(epoch=epoch, status=RunStatus.DIVERGED, diverged=where))
            self.log({"diverged_epoch": epoch, "diverged_step": where["step"]}, epoch)
        self.acc.print(f"diverged: non-finite {', '.join(where['tensors'])} at epoch {where['epoch']}, "
                       f"step {where['step']}; stopped")

    def save_features(self, epoch: int, split: str, feats: torch.Tensor, labels: torch.Tensor,
                      geometry: dict[str, torch.Tensor], margin: float, caption: str = "") -> None:
        """features/SPLIT-epoch-NNNN.npz (whole or not at all); the test split's also as features.npz."""
        folder = self.run_dir / "features"
        folder.mkdir(exist_ok=True)
        path = folder / f"{split}-epoch-{epoch:04d}.npz"
        try:
            np.savez(path, features=feats.numpy(), labels=labels.numpy(), margin=np.float64(margin),
                     caption=np.str_(caption), epoch=np.int64(epoch), **{k: v.numpy() for k, v in geometry.items()})
        except OSError:
            path.unlink(missing_ok=True)  # no half-written features file
            raise
        if split == "test":
            runinfo.atomic_copy(path, self.run_dir / "features.npz")

    # -- end of the run (main process) -----------------------------------------------------------
    def summary(self, state: dict, info: dict) -> dict:
        """summary.json (a preempted run's: it will continue, so W&B gets no summary yet)."""
        return runinfo.write_summary(self.run_dir, state, info)

    def finish(self, state: dict, info: dict, gif: bool) -> None:
        """summary.json, the W&B summary, and the GIF of the plots."""
        self.write_wandb_summary(self.summary(state, info))
        if gif:
            from arcdist import figures

            try:
                figures.render_gif(self.run_dir)
            except Exception as e:  # noqa: BLE001 - a plot, like the per-epoch ones: the run has finished anyway
                self.warn_once("plotting", e)

    # -- plots and tracking: never stop training -------------------------------------------------
    def warn_once(self, what: str, e: BaseException) -> None:
        """Plots and W&B are not worth stopping a run for: one warning per kind, then silence. Under
        ARCDIST_STRICT_PLOTS=1 (the test suite) a plotting failure raises instead: a test cannot pass on a
        figure that failed."""
        if what == "plotting" and os.environ.get(STRICT_PLOTS) == "1":
            raise e
        if what not in self.warned:
            self.warned.add(what)
            print(f"arcdist: warning: {what} failed ({first_line(e)}); training continues, further {what} "
                  "failures are not reported", file=sys.stderr, flush=True)

    def render_plots(self, epoch: int) -> dict:
        from arcdist import figures  # matplotlib stays out of the import path of the hot loop

        try:
            return figures.render_epoch(self.run_dir, epoch)
        except Exception as e:  # noqa: BLE001 - a full disk, a broken font cache: the run goes on
            self.warn_once("plotting", e)
            return {}

    def log(self, record: dict, epoch: int, images: dict | None = None, table: dict | None = None) -> None:
        """Scalars, the plots and, for a plotted epoch, the test features as a table (`table`: features, geometry)."""
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        try:
            self.acc.log(scalars, step=epoch)
            run = tracking.wandb_run(self.acc)
            if run is not None and (images or table):
                import wandb

                media = {f"plots/{name}": wandb.Image(str(path)) for name, path in (images or {}).items()}
                if table:
                    from arcdist.explore import wandb_table

                    media["features/test"] = wandb_table(*table["features"], table["geometry"], epoch)
                run.log(media, step=epoch)
        except Exception as e:  # noqa: BLE001 - W&B's own errors vary by version
            self.warn_once("W&B logging", e)

    def write_wandb_summary(self, summary: dict) -> None:
        run = tracking.wandb_run(self.acc)
        if run is None:
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)):
                run.summary[key] = value
