"""The order contract: which images each rank trains on at each step, and their augmentation draws.

Every dataset's batches follow it; everything in it is a pure function of (seed, epoch), so a resumed epoch
replays its steps exactly and a run gives the same batches for any world size:

- each epoch draws a permutation of the N training images (the "order" stream), or `repeats` of them one after
  another (an epoch of several passes over a small folder: N x repeats positions, each image once in each pass);
- global batch i is positions [i*B, (i+1)*B) of it (the last partial batch is dropped);
- rank r of W takes the r-th contiguous chunk of B/W positions of each global batch;
- each augmentation draws its parameters for all N positions at once from its own stream, so a position, hence the
  image the permutation puts there, gets the same draw whatever the batch size or world size.

Where the images live does not matter to it: arcdist.data serves them from the device; a dataset too big for that
could feed a DataLoader whose sampler takes `Order.permutation` in `Order.positions` chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from arcdist.datasets.augment import AUGMENTATIONS, Augmentation

if TYPE_CHECKING:
    from arcdist.config import Config

SEED_STRIDE = 1_000_003  # a stream's generator is seeded with seed * SEED_STRIDE + epoch + its offset
# The epoch's random streams: name -> (seed offset, the augmentations that draw from it, in their draw order).
# shift and flip share one stream (shift's draws first); any other augmentation takes a stream of its own.
STREAMS: dict[str, tuple[int, tuple[str, ...]]] = {
    "order": (0, ()),
    "move": (7_919, ("shift", "flip")),
    "rotate": (15_485_863, ("rotate",)),
    "crop": (32_452_843, ("crop",)),
}
SAMPLE_EPOCH = -1  # the order stream's "epoch" of the fixed training sample (no training epoch is negative)

_drawn = [name for _, names in STREAMS.values() for name in names]
if sorted(_drawn) != sorted(AUGMENTATIONS):
    raise TypeError(f"order.STREAMS must name each augmentation once: streams {_drawn}, augmentations "
                    f"{list(AUGMENTATIONS)}")


def stream(seed: int, epoch: int, name: str) -> torch.Generator:
    """The CPU generator of stream `name` in `epoch`."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + epoch + STREAMS[name][0])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's shuffled order of n images."""
    return torch.randperm(n, generator=stream(seed, epoch, "order"))


def sample_indices(n: int, seed: int, k: int) -> torch.Tensor:
    """A fixed random sample of min(k, n) of n images, in dataset order (the same for every epoch)."""
    return epoch_permutation(n, seed, SAMPLE_EPOCH)[:k].sort().values


def augmentation_draws(n: int, seed: int, epoch: int, values: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per position of the epoch's order, the draws of each augmentation that `values` turns on (by field name)."""
    out = {}
    for name, (_, names) in STREAMS.items():
        on = [a for a in names if values.get(a)]
        if on:
            g = stream(seed, epoch, name)
            for a in on:
                out[a] = AUGMENTATIONS[a].draw(g, n, values[a])
    return out


@dataclass(frozen=True)
class Order:
    """The settings of one rank's batches: global batch size, seed, rank of world, augmentation values by field."""

    batch_size: int  # global: images per step, summed over ranks
    seed: int
    rank: int = 0
    world: int = 1
    augment: dict[str, Any] = field(default_factory=dict)  # e.g. {"shift": 2, "flip": True}; absent or false: off
    repeats: int = 1  # passes over the images an epoch (data.repeats)

    def __post_init__(self):
        unknown = set(self.augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation {', '.join(sorted(unknown))}; known: {', '.join(AUGMENTATIONS)}")

    @classmethod
    def of(cls, cfg: "Config", rank: int = 0, world: int = 1) -> "Order":
        """The order a run's config asks for (data.batch_size, train.seed, each augmentation's data.<field>)."""
        return cls(cfg.data.batch_size, cfg.train.seed, rank, world,
                   {name: getattr(cfg.data, name) for name in AUGMENTATIONS}, max(1, cfg.data.repeats))

    @property
    def per_rank(self) -> int:
        return self.batch_size // self.world

    def steps(self, n: int) -> int:
        """Steps of an epoch over n images (`repeats` passes)."""
        return n * self.repeats // self.batch_size

    def permutation(self, n: int, epoch: int) -> torch.Tensor:
        """The epoch's order: `repeats` permutations of the n images from the epoch's order stream, one after
        another (the first is `epoch_permutation`'s)."""
        g = stream(self.seed, epoch, "order")
        return torch.cat([torch.randperm(n, generator=g) for _ in range(self.repeats)])

    def positions(self, step: int) -> slice:
        """This rank's positions of the epoch's order at `step`."""
        lo = step * self.batch_size + self.rank * self.per_rank
        return slice(lo, lo + self.per_rank)

    def draws(self, n: int, epoch: int) -> list[tuple[Augmentation, Any, torch.Tensor]]:
        """The augmentations that are on, in the order they apply: (augmentation, value, draws per position)."""
        drawn = augmentation_draws(n * self.repeats, self.seed, epoch, self.augment)  # a draw per position
        return [(a, self.augment[name], drawn[name]) for name, a in AUGMENTATIONS.items() if name in drawn]
