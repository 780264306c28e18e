"""Plots from gathered features and the W&B record of a run (offline, read back from its .wandb log)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from PIL import Image

from arcdist import figures
from arcdist.config import from_dict
from arcdist.tracking import read_offline_run
from helpers import PLOTS, RETRIEVAL, ROOT, TINY as TINY_RUN, cli_env, make_tiny_mnist, run_train

EPOCHS = 2
TINY = [*TINY_RUN, *PLOTS, *RETRIEVAL]  # this file is about the plots and the W&B record of them


@pytest.fixture(scope="module")
def wandb_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wb") / "run"
    args = [a for a in TINY if a not in ("--wandb", "disabled")]
    run_train([*args, "--wandb", "offline", "--group", "grid-xyz", "--epochs", str(EPOCHS), "--data-dir",
               str(tiny_data), "--output-dir", str(out), "--sweep-set", "data.batch_size=64"])  # as a grid row
    return out


@pytest.mark.slow
def test_offline_wandb_holds_history_config_and_summary(wandb_run):
    wb = read_offline_run(wandb_run)
    rows = [json.loads(line) for line in (wandb_run / "metrics.jsonl").read_text().splitlines()]
    hist = [h for h in wb["history"] if "test_accuracy" in h]
    assert [h["test_accuracy"] for h in hist] == [r["test_accuracy"] for r in rows]
    assert [h["train_loss"] for h in hist] == [r["train_loss"] for r in rows]
    assert [h["_step"] for h in hist] == [1, 2]
    for key in ("intra_spread_deg", "min_centre_angle_deg", "images_per_s", "margin", "lr"):
        assert key in hist[-1]
    assert any("plots/test_raw" in h for h in wb["history"])
    cfg = json.loads((wandb_run / "config.json").read_text())["config"]
    assert from_dict({k: v["value"] if isinstance(v, dict) and "value" in v else v
                      for k, v in wb["config"].items() if not k.startswith("_")}) == from_dict(cfg)
    assert cfg["data"]["batch_size"] == 64  # --sweep-set applies like --set, and names the grid row:
    assert wb["run"]["name"] == "T0-data.batch_size=64-s0" and wb["run"]["group"] == "grid-xyz"
    assert (wb["config"]["row"], wb["config"]["sweep"]) == ("T0 data.batch_size=64", ["data.batch_size=64"])
    assert set(wb["run"]["tags"]) == {"T0", "mnist"} and wb["run"]["job_type"] == "train"
    summary = json.loads((wandb_run / "summary.json").read_text())
    assert wb["summary"]["best_accuracy"] == summary["best_accuracy"]
    assert wb["summary"]["status"] == "finished" and wb["summary"]["diverged"] is False
    assert wb["run"]["id"] == summary["wandb_id"]


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run(wandb_run, tiny_data):
    first = read_offline_run(wandb_run)["run"]["id"]
    run_train(["--no-progress", "--wandb", "offline", "--resume", str(wandb_run), "--epochs", str(EPOCHS + 1),
               "--data-dir", str(tiny_data)])
    wb = read_offline_run(wandb_run)
    assert wb["run"]["id"] == first
    assert wb["config"]["row"] == "T0 data.batch_size=64"  # a resume by hand keeps the run's grid row
    assert [h["_step"] for h in wb["history"] if "test_accuracy" in h] == [EPOCHS + 1]


def _colours(png):
    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return {"#%02x%02x%02x" % tuple(c) for c in np.unique(rgb, axis=0)}


def test_plots_are_real_images_with_all_ten_class_colours(wandb_run):
    for split in ("test", "train"):
        for kind in ("raw", "circle"):
            png = wandb_run / "plots" / f"{split}-{kind}-epoch-{EPOCHS:04d}.png"
            assert Image.open(png).size[0] >= 400
            assert set(figures.COLOURS) <= _colours(png), png


def test_points_drawn_equal_gathered_rows(wandb_run):
    f = np.load(wandb_run / "features.npz")
    fig = figures.raw_figure(f["features"], f["labels"], 1.0, "t")
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection))
    assert drawn == len(f["labels"]) == 101
    fig = figures.circle_figure(f["features"], f["labels"], f["W"], 0.2, "t")
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection)) == 101


def test_gif_has_one_frame_per_epoch_and_replot_rebuilds_everything(wandb_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(wandb_run, copy)
    shutil.rmtree(copy / "plots")
    subprocess.run([sys.executable, "-m", "arcdist.plot", str(copy)], check=True, cwd=ROOT, env=cli_env())
    epochs = len((copy / "metrics.jsonl").read_text().splitlines())
    gif = Image.open(copy / "plots" / "test-raw.gif")
    assert gif.n_frames == epochs
    for e in range(1, epochs + 1):
        assert (copy / "plots" / f"test-raw-epoch-{e:04d}.png").is_file()
    assert Image.open(wandb_run / "plots" / "test-raw.gif").n_frames == epochs


@pytest.mark.slow
def test_two_ranks_draw_as_many_points_as_one(tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=333, seed=2)
    counts = []
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        run_train([*TINY, "--epochs", "1", "--data-dir", str(data), "--output-dir", str(out),
                   "--set", "data.batch_size=64"], world=world)
        f = np.load(out / "features" / "test-epoch-0001.npz")
        fig = figures.raw_figure(f["features"], f["labels"], 1.0, "t")
        counts.append(sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection)))
        train_sample = np.load(out / "features" / "train-epoch-0001.npz")
        assert len(train_sample["labels"]) == 256
    assert counts == [333, 333]


@pytest.mark.slow
def test_online_without_a_server_falls_back_to_offline_without_hanging(tiny_data, tmp_path):
    out = tmp_path / "run"
    env = cli_env(WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567", WANDB_BASE_URL="http://127.0.0.1:9",
                  ARCDIST_WANDB_INIT_TIMEOUT="5")
    env.pop("WANDB_MODE")  # credentials present: the default mode is online
    proc = run_train(["--variant", "T0", "--no-progress", "--epochs", "1", "--data-dir", str(tiny_data),
                      "--output-dir", str(out), "--set", "data.batch_size=64"], env=env, timeout=120)
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("warning: W&B")]
    assert len(warnings) == 1 and "logging offline instead" in warnings[0]
    wb = read_offline_run(out)
    assert [h["_step"] for h in wb["history"] if "test_accuracy" in h] == [1]


def test_a_gif_that_cannot_be_written_warns_and_the_run_still_ends_finished(tmp_path, capsys, monkeypatch):
    """The GIF is a plot: its failure (here its path is a folder) warns once; summary.json is written first."""
    import torch

    monkeypatch.delenv("ARCDIST_STRICT_PLOTS")  # what a user's run does (the suite's runs raise instead)
    from accelerate import Accelerator

    from arcdist.recorder import Recorder

    run = tmp_path / "run"
    run.mkdir()
    rec = Recorder(run, Accelerator(cpu=True))
    feats, labels = torch.randn(50, 2), torch.arange(50) % 10
    rec.save_features(1, "test", feats, labels, dict(W=torch.randn(10, 2)), 0.2)
    (run / "plots" / "test-raw.gif").mkdir(parents=True)
    state = dict(status="finished", epoch=1, best_accuracy=0.5, best_epoch=1)
    rec.finish(state, {}, gif=True)
    rec.finish(state, {}, gif=True)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("arcdist: warning: plotting failed ("), err
