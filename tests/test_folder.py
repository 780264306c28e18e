"""`--dataset folder`: a folder of images in ImageFolder's layout, read by torchvision; in memory or streamed."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from arcdist.config import DataConfig, ModelConfig
from arcdist.datasets import DataError, load_dataset
from arcdist.datasets.folder import ImageFolderDataset
from helpers import REAL_DATA, ROOT, metric_rows, run_train, tiny_args

_spec = importlib.util.spec_from_file_location("image_folder", ROOT / "tools" / "image_folder.py")
image_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_folder)

needs_mnist = pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found")


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory) -> Path:
    """The first 600 train and 200 test images of real MNIST as PNG folders."""
    out = tmp_path_factory.mktemp("pngs") / "mnist"
    image_folder.write_folder(out, "mnist", str(REAL_DATA), 600, 200)
    return out


@needs_mnist
def test_png_folders_decode_to_exactly_the_idx_pairs(mnist_pngs):
    idx = load_dataset("mnist", REAL_DATA, download=False)
    got = ImageFolderDataset(mnist_pngs, channels=1, image_size=28).read()
    for x, y, ref_x, ref_y in ((got.train_x, got.train_y, idx.train_x[:600], idx.train_y[:600]),
                               (got.test_x, got.test_y, idx.test_x[:200], idx.test_y[:200])):
        # the folder's order is by class, then by file name (the IDX position): a stable sort by label
        order = torch.sort(ref_y, stable=True).indices
        assert x.dtype == torch.uint8 and x.shape == ref_x.shape
        assert torch.equal(y, ref_y[order]) and torch.equal(x, ref_x[order])


@needs_mnist
def test_images_are_converted_to_the_variants_channels_and_size(mnist_pngs):
    ds = ImageFolderDataset(mnist_pngs, channels=3, image_size=32)
    x = ds.read().test_x
    assert x.shape == (200, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert ds.nbytes() == 800 * 3 * 32 * 32


@needs_mnist
def test_settle_records_classes_mean_and_std_of_the_train_split(mnist_pngs):
    data = ImageFolderDataset.settle(DataConfig(dataset="folder", data_dir=str(mnist_pngs), workers=0), ModelConfig())
    x = load_dataset("mnist", REAL_DATA, download=False).train_x[:600].double() / 255
    assert data.classes == tuple(str(d) for d in range(10))
    assert data.mean[0] == pytest.approx(x.mean().item(), abs=1e-6)
    assert data.std[0] == pytest.approx(x.std(correction=0).item(), abs=1e-6)
    assert ImageFolderDataset.settle(data, ModelConfig()) is data  # recorded once: a resume does not measure


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_streaming_gives_the_metrics_of_in_memory(mnist_pngs, tmp_path, world):
    rows = {}
    for stream in ("false", "true"):
        out = tmp_path / f"stream-{stream}"
        run_train(tiny_args(mnist_pngs, out, 2, "--dataset", "folder", "--set", f"data.stream={stream}",
                            "--set", "data.shift=1", "--set", "data.workers=1"), world=world)
        rows[stream] = metric_rows(out)
    assert len(rows["true"]) == 2 and rows["true"] == rows["false"]


def _bad(tmp_path: Path, pngs: Path, how: str) -> tuple[Path, str]:
    """A copy of `pngs` broken one way; returns it and the path the error must name."""
    d = tmp_path / how
    shutil.copytree(pngs, d)
    if how == "empty-class":
        for f in (d / "train" / "3").iterdir():
            f.unlink()
        return d, str(d / "train" / "3")
    if how == "corrupt-image":
        victim = sorted((d / "test" / "7").iterdir())[2]
        victim.write_bytes(victim.read_bytes()[:40])
        return d, str(victim)
    if how == "test-class-not-in-train":
        shutil.copytree(d / "test" / "9", d / "test" / "nine")
        return d, str(d / "test" / "nine")
    if how == "non-image-file":
        (d / "train" / "5" / "notes.txt").write_text("not an image")
        return d, str(d / "train" / "5" / "notes.txt")
    if how == "no-test-folder":
        shutil.rmtree(d / "test")
        return d, "no test/ folder"
    raise ValueError(how)


@needs_mnist
@pytest.mark.parametrize("how", ["empty-class", "corrupt-image", "test-class-not-in-train", "non-image-file",
                                 "no-test-folder"])
def test_a_bad_folder_is_one_line_naming_it_exit_2_nothing_written(mnist_pngs, tmp_path, how):
    data, named = _bad(tmp_path, mnist_pngs, how)
    out = tmp_path / "run"
    proc = run_train(tiny_args(data, out, 1, "--dataset", "folder", "--set", "data.workers=0"), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("arcdist: error: ") and named in lines[0], lines
    assert not out.exists()


def test_the_folder_spec_needs_its_recorded_classes():
    with pytest.raises(DataError, match="measured when its run starts"):
        ImageFolderDataset.spec_for(DataConfig(dataset="folder"), ModelConfig())
