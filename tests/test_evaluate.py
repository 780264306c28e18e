"""arcdist.evaluation.evaluate and the shift-averaged features: torchvision's affine as the reference for the shifts, a float64
mean of the views for the average, and the command on a trained tiny run (its figures, its refusals)."""
import json
import subprocess
import sys

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from arcdist.config import ConfigError
from arcdist.evaluation import evaluate
from arcdist.data import DeviceData, augment, get_spec
from arcdist.evaluation.gather import gather_features, shifted_features
from helpers import ROOT, cli_env, make_tiny_mnist, metric_rows, run_train, snapshot, tiny_args


def tv_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return TF.affine(x, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0], fill=0)


def move(x: torch.Tensor, dy: int, dx: int, pixels: int = 2) -> torch.Tensor:
    """data.augment with one (dy, dx) for every image: the move shifted_features makes."""
    return augment(x, torch.tensor([[dy, dx, 0]]).expand(len(x), 3), pixels)


def test_one_move_for_every_image_equals_torchvision():
    x = torch.randint(0, 256, (5, 1, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            assert torch.equal(move(x, dy, dx), tv_shift(x, dy, dx)), (dy, dx)
    assert torch.equal(move(x, 0, 0), x)
    assert move(x, 1, 0)[:, :, 0].sum() == 0 and move(x, 0, -1)[:, :, :, -1].sum() == 0  # zero fill


def test_shifted_features_are_the_views_and_their_mean_the_average():
    from accelerate import Accelerator

    torch.manual_seed(0)
    x = torch.randint(0, 256, (37, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (37,))
    data = DeviceData(x, y, get_spec("mnist"), torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    acc = Accelerator(cpu=True)
    plain, labels = gather_features(acc, model, data, 2, 10)
    zero, labels0 = shifted_features(acc, model, data, 2, 10, 0)
    assert zero.shape == (1, 37, 2) and torch.equal(zero[0], plain) and torch.equal(labels0, y)
    views, labels1 = shifted_features(acc, model, data, 2, 10, 1)
    assert views.shape == (9, 37, 2) and torch.equal(views[0], plain) and torch.equal(labels1, y)
    reference = model.double()
    with torch.no_grad():
        expected = torch.stack([reference(data.normalise(tv_shift(x, dy, dx)).double())
                                for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).mean(0)
    averaged = views.mean(0)
    assert torch.allclose(averaged.double(), expected, rtol=0, atol=1e-5)
    assert (averaged - plain).abs().max() > 1e-3  # the views differ: the average is not the plain feature


def test_the_shifted_views_of_a_streamed_split_are_those_of_the_same_images_in_memory(tmp_path):
    """A folder that streams (StreamData: images decoded per batch) is decoded once for the moved views; it failed
    ("property 'x' of 'StreamData' object has no setter") before."""
    from accelerate import Accelerator
    from PIL import Image

    from arcdist.data import StreamData
    from arcdist.datasets.folder import Decoder

    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (11, 28, 28), dtype=torch.uint8, generator=g)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img.numpy(), "L").save(paths[-1])
    y = torch.arange(11) % 3
    spec, cpu = get_spec("mnist"), torch.device("cpu")
    streamed = StreamData(tuple(paths), y, spec, cpu, Decoder(1, 28), workers=0)
    in_memory = DeviceData(pixels[:, None], y, spec, cpu)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))
    acc = Accelerator(cpu=True)
    views, labels = shifted_features(acc, model, streamed, 2, 4, 1)
    expected, expected_labels = shifted_features(acc, model, in_memory, 2, 4, 1)
    assert views.shape == (9, 11, 2) and torch.equal(views, expected) and torch.equal(labels, expected_labels)
    streamed.channels_last = True  # (as the trainer sets it): the decoded split keeps the layout
    assert streamed.in_memory().channels_last is True and in_memory.in_memory() is in_memory


def evaluate_cli(*args):
    return subprocess.run([sys.executable, "-m", "arcdist.evaluation.evaluate", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_tiny_mnist(root / "data", n_train=256, n_test=101, seed=4)
    run = root / "run"
    run_train(tiny_args(data, run, 2, "--set", "data.shift=1"))
    return data, run


def test_evaluate_reports_the_run_own_accuracy_and_the_average(trained, tmp_path):
    data, run = trained
    before = snapshot(run)
    out = tmp_path / "eval.json"
    proc = evaluate_cli(run, "--data-dir", data, "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = metric_rows(run)
    assert (result["epoch"], result["shift"], result["views"], result["test_images"]) == (2, 1, 9, 101)
    assert result["checkpoint"].endswith("epoch-0002")
    assert result["plain"]["accuracy"] == rows[-1]["test_accuracy"]  # the same model, data and precision
    assert result["plain"]["min_centre_angle_deg"] == rows[-1]["min_centre_angle_deg"]
    for key in ("plain", "averaged"):
        assert result[key]["errors"] == round((1 - result[key]["accuracy"]) * 101)
    lines = proc.stdout.strip().splitlines()[-2:]  # (after the Accelerator's device line)
    assert lines[0].startswith("epoch 2, plain: test accuracy") and "9 shifts" in lines[1]
    assert snapshot(run) == before  # reads only


def test_evaluate_refuses_a_corrupted_checkpoint_and_moves_nothing(trained, tmp_path, capsys):
    data, run = trained
    copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(run), str(copy)], check=True)
    weights = copy / "checkpoints" / "epoch-0002" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF  # inside the tensor data: only the checksum sees it
    weights.write_bytes(bytes(raw))
    before = snapshot(copy)
    assert evaluate.main([str(copy), "--data-dir", str(data)]) == 2  # refused before anything is built
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fails its checksums" in err and "--checkpoint" in err
    assert snapshot(copy) == before
    named = [evaluate.choose_checkpoint(copy, n).name for n in ("epoch-0001", "epoch-1", "1", "checkpoints/epoch-1")]
    assert named == ["epoch-0001"] * 4
    with pytest.raises(ConfigError, match="has no checkpoint epoch-3; pick one of"):
        evaluate.choose_checkpoint(copy, "epoch-3")
    older = evaluate_cli(copy, "--data-dir", data, "--checkpoint", "epoch-1", "--shift", "0", "--json",
                         tmp_path / "e1.json")
    assert older.returncode == 0, older.stderr
    result = json.loads((tmp_path / "e1.json").read_text())
    assert result["epoch"] == 1 and result["views"] == 1
    assert result["plain"] == result["averaged"]
    assert result["plain"]["accuracy"] == metric_rows(copy)[0]["test_accuracy"]


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    for args, text in (([tmp_path], "no config.json"), ([tmp_path, "--shift", "9"], "--shift 9")):
        try:
            status = evaluate.main([str(a) for a in args])
        except SystemExit as e:  # argparse's one-line error
            status = e.code
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and text in err, err
