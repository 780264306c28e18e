"""The training job end to end through its real entry point: run folder, resume equality, 2-rank DDP."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from arcdist.config import from_dict
from arcdist.data import load_dataset, DeviceData, get_spec
from arcdist.model import build_backbone
from helpers import metric_rows, EXACT, TINY, make_tiny_mnist, run_train, tiny_args, write_cifar


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_train(tiny_args(tiny_data, out, 3, "--seed", "1"))
    return out


@pytest.mark.slow
def test_run_folder_holds_config_metrics_features(tiny_run):
    rows = metric_rows(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "test_accuracy", "intra_spread_deg", "min_centre_angle_deg", "lr", "margin"):
        assert all(np.isfinite(r[key]) for r in rows), key
    doc = json.loads((tiny_run / "config.json").read_text())
    cfg = from_dict(doc["config"])
    assert cfg.variant == "T0" and cfg.train.epochs == 3 and cfg.data.batch_size == 64 and cfg.train.seed == 1
    assert doc["config"]["data"]["normalize"] == "dataset"  # "auto" resolved for a built-in dataset
    assert doc["versions"]["torch"] == torch.__version__.split("+")[0] or doc["versions"]["torch"] == torch.__version__
    assert doc["world_size"] == 1 and "git_sha" in doc
    f = np.load(tiny_run / "features.npz")
    assert f["features"].shape == (101, 2) and f["labels"].shape == (101,) and f["W"].shape == (10, 2)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert summary["final_accuracy"] == rows[-1]["test_accuracy"]
    assert [p.name for p in sorted((tiny_run / "checkpoints").iterdir())] == ["epoch-0002", "epoch-0003"]


def test_tiny_run_learns(tiny_run):
    # the synthetic classes are bars at distinct places: three epochs must beat chance (10%) by far
    assert metric_rows(tiny_run)[-1]["test_accuracy"] >= 0.5


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tiny_run, tiny_data, tmp_path):
    part = tmp_path / "part"
    common = [*TINY, "--data-dir", str(tiny_data), "--set", "data.batch_size=64", "--seed", "1"]
    run_train([*common, "--epochs", "2", "--output-dir", str(part)])
    run_train([*common[:-2], "--resume", str(part), "--epochs", "3", "--data-dir", str(tiny_data)])
    assert metric_rows(part) == metric_rows(tiny_run)
    a, b = np.load(part / "features.npz"), np.load(tiny_run / "features.npz")
    assert np.array_equal(a["features"], b["features"]) and np.array_equal(a["W"], b["W"])


@pytest.mark.slow
def test_augmentation_reaches_training_and_is_recorded(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "shifted"
    run_train([*TINY, "--epochs", "1", "--data-dir", str(tiny_data), "--output-dir", str(out),
               "--set", "data.batch_size=64", "--seed", "1", "--set", "data.shift=3", "--set", "data.flip=true"])
    cfg = from_dict(json.loads((out / "config.json").read_text())["config"])
    assert cfg.data.shift == 3 and cfg.data.flip is True
    # same seed, init and order as tiny_run's first epoch: only the augmented pixels differ
    assert metric_rows(out)[0]["train_loss"] != metric_rows(tiny_run)[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gathers_every_test_row_once(tmp_path, world):
    data = make_tiny_mnist(tmp_path / "data", n_train=520, n_test=1001, seed=5)  # 1001 splits evenly over neither
    out = tmp_path / "ddp"
    # T0's batch of 256 is rounded down to split over 3 ranks (255: 2 steps of 85 images a rank); fp32: compared
    # with an fp32 forward below
    proc = run_train([*TINY, "--epochs", "1", "--data-dir", str(data), "--output-dir", str(out)], world=world)
    doc = json.loads((out / "config.json").read_text())
    assert doc["world_size"] == world and "MULTI_CPU" in doc["distributed_type"]
    assert doc["config"]["data"]["batch_size"] == {2: 256, 3: 255}[world]
    assert ("batch 255 (85 on each of 3 processes): 256 does not split over 3" in proc.stdout) == (world == 3)
    optimizer = torch.load(out / "checkpoints" / "epoch-0001" / "optimizer.bin", weights_only=False)
    assert int(optimizer["state"][0]["step"]) == 520 // doc["config"]["data"]["batch_size"] == 2
    f = np.load(out / "features.npz")
    assert f["features"].shape == (1001, 2)
    splits = load_dataset("mnist", data, download=False)
    assert np.array_equal(f["labels"], splits.test_y.numpy())
    # the same weights in one process give the same features, row for row
    cfg = from_dict(doc["config"])
    net = build_backbone(cfg.model)
    net.load_state_dict(load_file(out / "checkpoints" / "epoch-0001" / "model.safetensors"))
    net.eval()
    dev = DeviceData(splits.test_x, splits.test_y, get_spec("mnist"), torch.device("cpu"))
    with torch.no_grad():
        single = net(dev.normalise(dev.x)).numpy()
    np.testing.assert_allclose(f["features"], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch, world, split", [(256, 2, 256), (256, 3, 255), (256, 6, 252), (255, 5, 255),
                                                (16, 32, 32), (256, 1, 256)])
def test_an_unset_batch_is_rounded_down_to_split_over_the_processes(batch, world, split):
    from arcdist.shape import split_batch

    assert split_batch(batch, world) == split


@pytest.mark.parametrize("n, drawn", [(60_000, 5_000), (50_000, 5_000), (30_000, 3_000), (10_000, 1_000),
                                      (3_000, 1_000), (1_000, 1_000), (512, 512), (2, 2)])
def test_the_plotted_training_sample_is_a_tenth_of_a_small_training_set_at_least_1000(n, drawn):
    from arcdist.trainer import train_sample_size

    assert train_sample_size(n) == drawn


def test_a_set_batch_that_does_not_split_over_three_ranks_is_one_line_exit_2(tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=300, n_test=30)
    proc = run_train([*TINY, "--epochs", "1", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"),
                      "--set", "data.batch_size=256"], world=3, check=False)
    assert proc.returncode == 2
    # said once: ranks 1 and 2 leave it to rank 0 and are stopped as the launcher stops them when rank 0 exits
    assert proc.stderr.strip().splitlines() == [
        "arcdist: error: batch size 256 does not split over 3 processes; use a multiple of 3 (255 or 258), or leave "
        "data.batch_size unset"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cifar_variant_trains_on_synthetic_cifar(tmp_path):
    data = write_cifar(tmp_path / "data", n_per_batch=16)
    out = tmp_path / "c1"
    run_train(["--variant", "C1", "--epochs", "1", "--no-progress", "--wandb", "disabled", "--data-dir", str(data),
               "--output-dir", str(out), "--set", "data.batch_size=16", "--set", "train.mixed_precision=no"])
    f = np.load(out / "features.npz")
    assert f["features"].shape == (16, 2) and np.isfinite(f["features"]).all()
    # a grey 28-px layer list on colour 32-px images: its first ConvLayer takes 3 channels, its map is pooled to the
    # fc's size; MNIST's variant on CIFAR-10 trains
    grey = tmp_path / "v2"
    run_train(["--variant", "V2", "--dataset", "cifar10", "--epochs", "1", "--data-dir", str(data), "--no-progress",
               "--wandb", "disabled", "--plot-every", "0", "--output-dir", str(grey), "--set", "data.batch_size=16"])
    model = json.loads((grey / "config.json").read_text())["config"]["model"]
    assert (model["in_channels"], model["image_size"]) == (3, 32)
    assert np.load(grey / "features.npz")["features"].shape == (16, 2)
    proc = run_train(["--variant", "C1", "--dataset", "mnist", "--data-dir", str(make_tiny_mnist(tmp_path / "m")),
                      "--no-progress", "--output-dir", str(tmp_path / "x"), "--wandb", "disabled"],
                     check=False)  # C1's 4 pools need 32 px, MNIST has 28
    assert proc.returncode == 2 and "use images of at least 32 px (--set model.image_size=32)" in proc.stderr


@pytest.mark.slow
def test_frozen_head_trains_under_two_rank_ddp_and_keeps_w(tiny_data, tmp_path):
    # torch's DDP refuses a module without trainable parameters: the frozen head must stay out of it
    out = tmp_path / "frozen"
    order = "(9,8,7,6,5,4,3,2,1,0)"
    run_train([*TINY, "--epochs", "3", "--data-dir", str(tiny_data), "--output-dir", str(out),
               "--set", "data.batch_size=64", "--set", "head.init=even", "--set", "head.freeze=true",
               "--set", f"head.order={order}", "--set", "data.rotate=10"], world=2)
    w = np.load(out / "features.npz")["W"]
    angles = np.rad2deg(np.arctan2(w[:, 1], w[:, 0])) % 360
    np.testing.assert_allclose(angles[list(eval(order))], np.arange(10) * 36.0, atol=1e-4)
    cfg = from_dict(json.loads((out / "config.json").read_text())["config"])
    assert cfg.head.freeze and cfg.head.order == eval(order) and cfg.data.rotate == 10.0
    rows = metric_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["test_accuracy"] >= 0.5


def test_ema_is_the_exponential_average_of_the_steps(tiny_data, tmp_path):
    from accelerate import Accelerator

    from arcdist.train import Trainer, build_config, parse_args

    decay = 0.2  # reached at the 2nd update: both sides of the warm-up's min below are taken
    cfg = build_config(parse_args(["--variant", "T0", "--data-dir", str(tiny_data), "--set", "data.batch_size=64",
                                   "--set", f"train.ema={decay}", *EXACT]))
    trainer = Trainer(cfg, tmp_path / "ema", Accelerator(cpu=True), no_progress=True)
    live = trainer.acc.unwrap_model(trainer.backbone)
    reference = None
    for step in range(3):
        x, y = trainer.train_data.batch(torch.arange(step * 64, (step + 1) * 64))
        trainer.stepper.train_step(x, y, 0.2)
        tensors = [*live.parameters(), *live.buffers()]
        now = [t.detach().clone().double() for t in tensors]
        # the first update copies the weights; the n-th later one keeps min(decay, (1 + n) / (10 + n)) of the average
        # (integer buffers, BatchNorm's batch count, are copied)
        keep = min(decay, (1 + step) / (10 + step))
        reference = now if reference is None else [
            keep * a + (1 - keep) * b if t.is_floating_point() else b for t, a, b in zip(tensors, reference, now)]
    averaged = [*trainer.ema.module.parameters(), *trainer.ema.module.buffers()]
    assert len(averaged) == len(reference)
    for got, want in zip(averaged, reference):
        torch.testing.assert_close(got.double(), want.to(got.dtype).double(), atol=1e-5, rtol=1e-5)
    assert not torch.equal(next(trainer.ema.module.parameters()), next(live.parameters()))


@pytest.mark.slow
def test_resume_with_ema_equals_uninterrupted_run(tiny_run, tiny_data, tmp_path):
    common = [*TINY, "--data-dir", str(tiny_data), "--set", "data.batch_size=64", "--seed", "1",
              "--set", "train.ema=0.9", "--plot-every", "0"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_train([*common, "--epochs", "3", "--output-dir", str(whole)])
    run_train([*common, "--epochs", "2", "--output-dir", str(part)])
    run_train([*TINY, "--resume", str(part), "--epochs", "3", "--data-dir", str(tiny_data), "--plot-every", "0"])
    assert metric_rows(part) == metric_rows(whole)
    a, b = np.load(part / "features.npz"), np.load(whole / "features.npz")
    assert np.array_equal(a["features"], b["features"])
    # the average changes what is evaluated, not what is trained: tiny_run is the same run without EMA
    assert [r["train_loss"] for r in metric_rows(whole)] == [r["train_loss"] for r in metric_rows(tiny_run)]
    assert not np.array_equal(b["features"], np.load(tiny_run / "features.npz")["features"])


@pytest.mark.slow
def test_resume_reads_the_data_folder_the_run_recorded(tiny_data, tmp_path):
    import shutil

    from helpers import cli_env

    data, out = tmp_path / "elsewhere", tmp_path / "run"
    shutil.copytree(tiny_data, data)
    env = {k: v for k, v in cli_env().items() if k != "ARCDIST_DATA_DIR"}
    common = [*TINY, "--set", "data.batch_size=64", "--plot-every", "0", "--mixed-precision", "no"]
    run_train([*common, "--data-dir", str(data), "--epochs", "1", "--output-dir", str(out)], env=env)
    # no --data-dir; ARCDIST_DATA_DIR (the machine's built-in datasets) does not override a recorded folder
    run_train([*TINY, "--resume", str(out), "--epochs", "2", "--plot-every", "0"],
              env=dict(env, ARCDIST_DATA_DIR=str(tmp_path / "unrelated")))
    assert [r["epoch"] for r in metric_rows(out)] == [1, 2]
    shutil.move(data, tmp_path / "moved")
    before = sorted(p.name for p in out.rglob("*"))
    proc = run_train([*TINY, "--resume", str(out), "--epochs", "3", "--plot-every", "0"], env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert str(data) in proc.stderr and "--data-dir" in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    run_train([*TINY, "--resume", str(out), "--epochs", "3", "--plot-every", "0"],  # the recorded one gone: the variable
              env=dict(env, ARCDIST_DATA_DIR=str(tmp_path / "moved")))
    assert [r["epoch"] for r in metric_rows(out)] == [1, 2, 3]
