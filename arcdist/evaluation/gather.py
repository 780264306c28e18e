"""2-D features of all ranks: each rank embeds a shard, the gather returns every row once, in dataset order."""
from __future__ import annotations

import copy
import math

import torch
from accelerate import Accelerator

from arcdist.data import DeviceData, augment, shard_bounds


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
        parts = [model(data.normalise(x)).float().clone()
                 for x in data.images(slice(i, min(i + chunk, hi)) for i in range(lo, hi, chunk))]
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



@torch.no_grad()
def shifted_features(acc: Accelerator, model: torch.nn.Module, data: DeviceData, feature_dim: int, chunk: int,
                     pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gather_features of each of the (2·pixels + 1)² views of `data`, every image moved by (dy, dx) with |dy|, |dx|
    <= pixels (data.augment's zero-filled move, the one a `data.shift=pixels` recipe trains on): features
    (views, N, feature_dim), the unmoved view first, and the labels."""
    data = data.in_memory()  # a streamed split is decoded once here, then moved in memory
    n = len(data)
    moves = [(0, 0)] + [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1)
                        if (dy, dx) != (0, 0)]
    views, labels = [], None
    for dy, dx in moves:
        view = copy.copy(data)
        if dy or dx:
            view.x = augment(data.x, torch.tensor([[dy, dx, 0]]).expand(n, 3), pixels)
        feats, labels = gather_features(acc, model, view, feature_dim, chunk)
        views.append(feats)
    return torch.stack(views), labels
