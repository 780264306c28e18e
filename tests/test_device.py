"""The device rule (docs/guarantees.md): evaluation hands back host tensors, and a model on a CUDA device evaluates
them without mixing devices. Checked on a CPU-only machine with FakeTensorMode: a fake 'cuda' tensor multiplied
with a CPU one raises FakeTensorDeviceMismatchError, as a real GPU run would fail at its first evaluation."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from arcdist.heads import HEADS, HeadConfig, build_head, head_of_kind


@pytest.mark.parametrize("kind", list(HEADS))
@pytest.mark.parametrize("dim", [2, 128])
def test_a_cuda_head_predicts_for_the_gathered_host_features(kind, dim):
    with FakeTensorMode():
        with torch.device("cuda"):
            head = build_head(head_of_kind(HeadConfig(num_classes=20), kind), dim, 10)
        assert head.weight.device.type == "cuda"
        feats = torch.randn(64, dim, device="cpu")  # what arcdist.evaluation.gather.gather_features hands back on every rank
        scores = head.predict(feats)
        assert scores.device.type == "cpu" and scores.dtype == torch.float32 and tuple(scores.shape) == (64, 20)
        on_device = head.predict(torch.randn(8, dim, device="cuda"))  # features already on the head's device stay
        assert on_device.device.type == "cuda" and tuple(on_device.shape) == (8, 20)
        assert all(t.device.type == "cpu" for t in head.geometry().values())  # what the recorder saves and plots


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_cuda_run_asks_for_deterministic_kernels_and_nccl_blocking_wait(monkeypatch, deterministic):
    from dataclasses import replace

    from arcdist import hardware
    from arcdist.config import Config

    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: calls.append(on))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    env = {}
    cfg = Config()
    hardware.configure_cuda(replace(cfg, train=replace(cfg.train, deterministic=deterministic)), env)
    assert env["TORCH_NCCL_BLOCKING_WAIT"] == "1"  # a timed-out collective raises: the one-line error, exit 4
    assert calls == ([True] if deterministic else [])
    assert env.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
    assert torch.backends.cudnn.benchmark is (not deterministic)
    own = {"TORCH_NCCL_BLOCKING_WAIT": "0"}
    hardware.configure_cuda(cfg, own)
    assert own["TORCH_NCCL_BLOCKING_WAIT"] == "0"  # a user's own setting stays


def test_a_cuda_backbone_trains_without_reading_its_prelu_slope_to_the_host():
    """On a CPU the PReLU reads its slope as a number (leaky_relu's kernels); on a GPU that would be a host sync
    every layer and step: a 'cuda' backbone in training mode must take F.prelu (a fake tensor cannot be read)."""
    from arcdist.model import PReLU, build_backbone
    from arcdist.variants import get_variant

    cfg = get_variant("A8").config.model
    with FakeTensorMode():
        with torch.device("cuda"):
            net = build_backbone(cfg).train()
        assert any(isinstance(m, PReLU) for m in net.modules())
        feats = net(torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, device="cuda"))
        assert feats.device.type == "cuda" and tuple(feats.shape) == (4, cfg.feature_dim) and feats.requires_grad


@pytest.mark.parametrize("size, net_size", [(48, 0), (64, 0), (96, 31)])
def test_a_cuda_backbone_at_another_size_and_per_image_normalisation_stay_on_the_device(size, net_size):
    """A larger image's map is pooled inside the net (48 px: a whole multiple; 64 px: the matrix form; 96 px: the
    image itself to 31 px first, model.net_size) and each image normalised by its own mean and std: all on the
    images' device, no host read (a fake tensor has none)."""
    from dataclasses import replace

    from arcdist.data import normalise
    from arcdist.model import build_backbone
    from arcdist.variants import get_variant

    cfg = replace(get_variant("A8").config.model, in_channels=3, image_size=size, net_size=net_size)
    with FakeTensorMode():
        with torch.device("cuda"):
            net = build_backbone(cfg).train()
            mean, inv_std = torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 1 / 60.0)
        pixels = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, device="cuda")
        x = normalise(pixels, mean, inv_std, per_image=True)
        feats = net(x)  # (a fake CUDA backward needs a real CUDA context: forward only, as above)
        assert x.device.type == feats.device.type == "cuda" and tuple(feats.shape) == (4, 2) and feats.requires_grad


def test_a_cuda_epoch_of_several_passes_serves_its_batches_on_the_device():
    """data.repeats: the epoch's order (3 permutations) and each position's augmentation draws (shift, crop, rotate)
    are made on the host and moved once an epoch; the batches of images and labels are the device's (a fake tensor
    has no host copy)."""
    from arcdist.data import DeviceData, train_batches
    from arcdist.datasets import Order, dataset_spec

    with FakeTensorMode():
        x = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, device="cuda")
        data = DeviceData(x, torch.arange(20, device="cuda"), dataset_spec("mnist"), torch.device("cuda"))
        batches = list(train_batches(data, Order(8, seed=1, repeats=3, augment=dict(shift=2, crop=0.5, rotate=10.0)), epoch=1))
    assert len(batches) == 7  # 60 positions // 8
    assert all(xb.device.type == yb.device.type == "cuda" and tuple(xb.shape) == (8, 1, 28, 28) for xb, yb in batches)


@pytest.mark.parametrize("stem, channels, size", [("imagenet", 3, 224), ("small", 1, 32)])
def test_a_cuda_resnet18_of_either_stem_stays_on_the_device(stem, channels, size):
    """ResNet-18 for photos (224 px, the folder's largest size unless set) and its small-image stem (model.stem)
    build and run forward on the images' device."""
    from dataclasses import replace

    from arcdist.model import build_backbone
    from arcdist.variants import get_variant

    cfg = replace(get_variant("R18").config.model, in_channels=channels, image_size=size, stem=stem, feature_dim=128)
    with FakeTensorMode():
        with torch.device("cuda"):
            net = build_backbone(cfg).train()
        feats = net(torch.randn(2, channels, size, size, device="cuda"))
        assert feats.device.type == "cuda" and tuple(feats.shape) == (2, 128) and feats.requires_grad
        assert all(p.device.type == "cuda" for p in net.parameters())
