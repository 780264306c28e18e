"""2-D features of all ranks: each rank embeds a shard, the gather returns every row once, in dataset order."""
from __future__ import annotations

import copy
import math

import torch
from accelerate import Accelerator

from arcdist.data import DeviceData, shard_bounds


@torch.no_grad()
def gather_features(acc: Accelerator, model: torch.nn.Module, data: DeviceData, feature_dim: int, chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of all of `data` on every rank (CPU): exactly len(data) rows for any world size.

    Shards are padded to equal length for the gather and the padding is cut off again. (Accelerate's helpers do
    not do this job: `gather_for_metrics` only drops the duplicates of a prepared DataLoader's last batch, and
    we have no DataLoader; `pad_across_processes` pads alike but first gathers every rank's length, which
    shard_bounds already gives, and the cut stays ours.)
    """
    rank, world = acc.process_index, acc.num_processes
    if world > 1:  # BN running statistics drift apart per rank; use rank 0's, as the checkpoint does
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)
    model.eval()
    n = len(data)
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    lo, hi = bounds[rank]
    with acc.autocast():
        # (clone: a CUDA-graphed forward, train.compile=reduce-overhead, reuses its output's memory)
        parts = [model(data.normalise(data.x[i:min(i + chunk, hi)])).float().clone() for i in range(lo, hi, chunk)]
    model.train()
    width = math.ceil(n / world)
    feats = torch.zeros(width, feature_dim, device=acc.device)
    labels = torch.full((width,), -1, dtype=torch.long, device=acc.device)
    if parts:
        feats[:hi - lo] = torch.cat(parts)
    labels[:hi - lo] = data.y[lo:hi]
    all_feats, all_labels = acc.gather((feats, labels))
    keep = torch.cat([torch.arange(r * width, r * width + b - a) for r, (a, b) in enumerate(bounds)])
    keep = keep.to(all_feats.device)
    return all_feats[keep].cpu(), all_labels[keep].cpu()


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(N, C, H, W) images moved by (dy, dx) pixels, down/right for positive values, zero fill (data.augment's
    move, for one shift of every image)."""
    h, w, k = x.shape[-2], x.shape[-1], max(abs(dy), abs(dx))
    padded = torch.nn.functional.pad(x, (k, k, k, k))
    return padded[..., k - dy:k - dy + h, k - dx:k - dx + w]


@torch.no_grad()
def shift_averaged_features(acc: Accelerator, model: torch.nn.Module, data: DeviceData, feature_dim: int,
                            chunk: int, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gather_features, each image's feature the mean of its (2·pixels + 1)² views moved by up to `pixels` in each
    direction (test-time averaging over the shifts a `data.shift=pixels` recipe trains on); pixels=0: plain.

    The mean of the features, not of their directions: a view the net is sure of (a long feature) counts more.
    """
    total, labels = None, None
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            view = copy.copy(data)
            view.x = shift(data.x, dy, dx)
            feats, labels = gather_features(acc, model, view, feature_dim, chunk)
            total = feats if total is None else total + feats
    return total / (2 * pixels + 1) ** 2, labels
