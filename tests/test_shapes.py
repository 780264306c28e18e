"""The data decides the shape: class count, names, channels and image size come from a folder unless set, at the
edges of each range (2, 5, 20 classes; grey and colour; 28 and 48 px), with plots for every class count."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from arcdist.datasets import dataset_spec
from helpers import PLOTS, REAL_DATA, ROOT, run_train, snapshot, tiny_args

_spec = importlib.util.spec_from_file_location("image_folder", ROOT / "tools" / "image_folder.py")
image_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_folder)

pytestmark = [pytest.mark.skipif(not (REAL_DATA / "FashionMNIST" / "raw").is_dir(),
                                 reason="real MNIST and Fashion-MNIST not found"), pytest.mark.slow]
FASHION = dataset_spec("fashion-mnist").classes
IN_PROCESS = ["--set", "data.workers=0"]  # decoded in the training process: the shape does not depend on workers,
# and each DataLoader's worker processes cost a second here (the default's workers: tests/test_folder.py)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Small folders (12 train and 6 test images per class) written from the real files by tools/image_folder.py."""
    root = tmp_path_factory.mktemp("shapes")
    made = {"two": dict(names=["mnist"], classes=["3", "8"]),
            "five": dict(names=["mnist"], classes=[str(d) for d in range(5)]),
            "twenty": dict(names=["mnist", "fashion-mnist"]),
            "colour48": dict(names=["mnist"], tinted=True, size=48, fmt="jpg")}
    for name, kw in made.items():
        image_folder.write_mixed(root / name, data_dir=str(REAL_DATA), per_class=(12, 6), **kw)
    return {name: root / name for name in made}


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["config"]


@pytest.mark.parametrize("name, classes, channels, size", [
    ("two", ["3", "8"], 1, 28),
    ("five", ["0", "1", "2", "3", "4"], 1, 28),
    ("twenty", [*map(str, range(10)), *FASHION], 1, 28),
    ("colour48", [*map(str, range(10))], 3, 48),
])
def test_a_folder_trains_with_the_shape_of_its_data(folders, tmp_path, name, classes, channels, size):
    out = tmp_path / "run"
    run_train(tiny_args(folders[name], out, 1, "--dataset", "folder", *PLOTS, *IN_PROCESS, batch=16))
    cfg = config_of(out)
    assert cfg["head"]["num_classes"] == len(classes) and cfg["head"]["order"] == []
    assert list(cfg["data"]["classes"]) == sorted(classes)
    assert (cfg["model"]["in_channels"], cfg["model"]["image_size"]) == (channels, size)
    assert len(cfg["data"]["mean"]) == channels
    assert (cfg["data"]["normalize"], cfg["model"]["pool"]) == ("image", "layout")  # "auto" resolved for a folder
    assert cfg["model"]["net_size"] == (28 if size > 30 else 0)  # T0's list: MNIST's 28 px, 27-30 unpooled
    f = np.load(out / "features.npz")
    assert f["W"].shape == (len(classes), 2) and set(np.unique(f["labels"])) == set(range(len(classes)))
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["test-circle-epoch-0001.png", "test-raw-epoch-0001.png", "test-raw.gif",
                     "train-circle-epoch-0001.png", "train-raw-epoch-0001.png"]


def test_colour_read_as_grey_when_asked_and_a_class_count_against_the_data_refused(folders, tmp_path):
    out = tmp_path / "grey"
    run_train(tiny_args(folders["colour48"], out, 1, "--dataset", "folder", *IN_PROCESS,
                        "--set", "model.in_channels=1", "--set", "model.image_size=28", batch=16))
    cfg = config_of(out)
    assert (cfg["model"]["in_channels"], cfg["model"]["image_size"], len(cfg["data"]["mean"])) == (1, 28, 1)
    assert cfg["model"]["net_size"] == 0
    before = snapshot(tmp_path)
    proc = run_train(tiny_args(folders["five"], tmp_path / "refused", 1, "--dataset", "folder",
                               "--set", "head.num_classes=10"), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "head.num_classes=10" in lines[0] and "has 5 classes" in lines[0], lines
    assert snapshot(tmp_path) == before


def test_resnet18_takes_any_channels_and_size_and_loads_local_weights(tmp_path):
    from dataclasses import replace

    import torch
    from torchvision.models import resnet18

    from arcdist.config import ConfigError
    from arcdist.model import build_backbone, describe, start_weights
    from arcdist.variants import VARIANTS

    cfg = VARIANTS["R18"].config.model
    assert (cfg.arch, cfg.in_channels, cfg.image_size) == ("resnet18", 3, 96)
    for channels, size in ((3, 96), (1, 40), (3, 32)):
        net = build_backbone(replace(cfg, in_channels=channels, image_size=size)).eval()
        assert net(torch.rand(2, channels, size, size)).shape == (2, 2)
    assert describe(cfg)["params"] == sum(p.numel() for p in build_backbone(cfg).parameters())
    ref = resnet18(weights=None)  # a torchvision state dict as a user would have it, 1,000-class fc included
    torch.save(ref.state_dict(), tmp_path / "r18.pt")
    with_weights = replace(cfg, weights=str(tmp_path / "r18.pt"))
    assert not torch.equal(build_backbone(with_weights).conv1.weight, ref.conv1.weight)  # building never loads
    net = build_backbone(with_weights)
    start_weights(net, with_weights)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ref.state_dict().items() if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (2, 512)
    for junk in (b"not a state dict", b"junk\n"):  # the second unpickles to a KeyError, not an UnpicklingError
        (tmp_path / "bad.pt").write_bytes(junk)
        with pytest.raises(ConfigError, match="model.weights=.*bad.pt: cannot load it"):
            start_weights(build_backbone(cfg), replace(cfg, weights=str(tmp_path / "bad.pt")))
    torch.save([ref.conv1.weight], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="list.pt holds a list, not a state dict"):
        start_weights(build_backbone(cfg), replace(cfg, weights=str(tmp_path / "list.pt")))


def test_imagenet_weights_come_from_torch_hubs_cache_and_a_grey_run_sums_the_first_filters(tmp_path, monkeypatch):
    """model.weights=imagenet: torchvision's file in torch.hub's cache (a stand-in here: no network), loaded; a grey
    run's conv1 is the sum of the colour filters, so grey x answers as (x, x, x) did; offline without the file, one
    line naming where it goes."""
    from dataclasses import replace
    from urllib.error import URLError

    import torch
    from torchvision.models import ResNet18_Weights, resnet18

    from arcdist.config import ConfigError
    from arcdist.model import build_backbone, start_weights
    from arcdist.variants import VARIANTS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cfg = replace(VARIANTS["R18"].config.model, weights="imagenet")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    with pytest.raises(ConfigError) as e:
        start_weights(build_backbone(cfg), cfg)
    assert str(e.value) == (f"model.weights=imagenet: cannot fetch {ResNet18_Weights.IMAGENET1K_V1.url} (<urlopen "
                            f"error offline>); offline, copy {cached.name} into {cached.parent}/ or pass "
                            "model.weights=PATH")
    ref = resnet18(weights=None).eval()
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), cached)
    colour, grey = build_backbone(cfg).eval(), build_backbone(replace(cfg, in_channels=1)).eval()
    start_weights(colour, cfg)
    start_weights(grey, replace(cfg, in_channels=1))
    assert torch.equal(colour.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(grey.conv1(x), ref.conv1(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


def test_weights_on_a_layer_list_are_one_line():
    from dataclasses import replace

    from arcdist.config import ConfigError, validate
    from arcdist.variants import VARIANTS

    cfg = VARIANTS["A8"].config
    with pytest.raises(ConfigError, match=r"model.weights=imagenet: only model.arch=resnet18 \(--variant R18\)"):
        validate(replace(cfg, model=replace(cfg.model, weights="imagenet")))


def test_a_run_starts_from_model_weights_and_no_longer_needs_the_file(folders, tmp_path):
    """A new R18 run loads model.weights; its checkpoints hold the weights after that: embed and a resume work with
    the file gone (they read it on every build before)."""
    import torch
    from torchvision.models import resnet18

    from arcdist.evaluation import embed

    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "start.pt")
    out = tmp_path / "run"
    args = ["--variant", "R18", "--set", "model.feature_dim=2", "--set", "model.image_size=28",
            "--set", "optim.lr=1e-12", "--set", f"model.weights={tmp_path / 'start.pt'}", *IN_PROCESS]
    run_train(tiny_args(folders["two"], out, 1, "--dataset", "folder", *args, batch=8))
    (tmp_path / "start.pt").unlink()
    saved = embed.load_embedder(out)[1].backbone  # the epoch-1 checkpoint's, built and loaded without the file
    torch.testing.assert_close(saved.conv1.weight, ref.conv1.weight.sum(1, keepdim=True), rtol=0, atol=1e-6)  # grey
    torch.testing.assert_close(saved.layer4[1].conv2.weight, ref.layer4[1].conv2.weight, rtol=0, atol=1e-6)
    assert embed.main([str(out), "--out", str(tmp_path / "e.npz"), "--no-progress"]) == 0
    assert np.load(tmp_path / "e.npz")["features"].shape == (12, 2)
    run_train(["--resume", str(out), "--epochs", "2", "--no-progress", "--wandb", "disabled"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
