"""Training augmentations, one table: each entry is one function on a batch and the DataConfig field that sets it.

An entry's field (data.shift, data.flip, data.crop, data.rotate) is off at its false value. Its `draw` makes the
epoch's per-image parameters in one go, from the entry's random stream (arcdist.datasets.order.STREAMS): a draw
belongs to a position of the epoch's order, hence to one image, whatever the batch size or the number of ranks.
`apply` transforms a batch (N, C, H, W) given its rows of the draws. Entries apply in table order.

A new augmentation: its function and entry here, its row in order.STREAMS (a stream of its own, so that the others'
draws stay as they were), its DataConfig field and its check in config.validate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    field: str  # the DataConfig field: its value, false for off
    draw: Callable[[torch.Generator, int, Any], torch.Tensor]  # (generator, images, value) -> per-image draws
    apply: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (batch, its draws, value) -> batch


def move(x: torch.Tensor, plan: torch.Tensor, shift: int) -> torch.Tensor:
    """Mirror each (N, C, H, W) image where plan's flip is 1, then shift it by plan's (dy, dx) with zero fill.

    `plan` is (N, 3) ints (dy, dx, flip), |dy|, |dx| <= shift; content moves down/right for positive dy/dx.
    One gather on the device, any dtype: exact pixel moves.
    """
    n, c, h, w = x.shape
    plan = plan.to(x.device)
    padded = F.pad(x, (shift, shift, shift, shift)) if shift else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = shift + ar_h - plan[:, 0, None]  # (N, H): padded source row of each output row
    cols = ar_w - plan[:, 1, None]  # (N, W): source column, then mirrored for flipped images
    cols = shift + torch.where(plan[:, 2, None].bool(), w - 1 - cols, cols)
    images = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[images, channels, rows[:, None, :, None], cols[:, None, None, :]]


def flip(x: torch.Tensor, flips: torch.Tensor, on: bool = True) -> torch.Tensor:
    """Mirror left-right the images whose draw is 1."""
    return move(x, F.pad(flips[:, None], (2, 0)), 0)


def shift(x: torch.Tensor, moves: torch.Tensor, pixels: int) -> torch.Tensor:
    """Move each image by its (dy, dx), |dy|, |dx| <= pixels, with zero fill."""
    return move(x, F.pad(moves, (0, 1)), pixels)


def resample(x: torch.Tensor, theta: torch.Tensor, fill: str) -> torch.Tensor:
    """Each (N, C, H, W) image sampled bilinearly where its (N, 2, 3) `theta` maps the output's [-1, 1] square
    (grid_sample's padding_mode `fill` outside the image); returns float32."""
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=fill, align_corners=False)


def rotate(x: torch.Tensor, angles: torch.Tensor, degrees: float = 0.0) -> torch.Tensor:
    """Rotate each (N, C, H, W) image by its angle (radians, counter-clockwise on screen) about its centre.

    Bilinear, zero fill (raw pixel space, so the fill is the background); returns float32.
    """
    cos, sin = angles.cos().float(), angles.sin().float()
    # grid_sample's theta maps output to input coordinates (x right, y down): the inverse rotation
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    return resample(x, theta, "zeros")


CROP_ASPECT = (3 / 4, 4 / 3)  # a crop box's width / height lies in this range, log-uniformly (torchvision's)


def crop_boxes(g: torch.Generator, n: int, smallest: float) -> torch.Tensor:
    """(n, 4) float64 boxes (width, height, x offset, y offset) as fractions of the image: area uniform in
    [smallest, 1]; aspect (width / height) log-uniform in the part of CROP_ASPECT that keeps both sides within the
    image (torchvision redraws a box that does not fit, skewing its areas; 1:1 for the whole image); placed
    uniformly inside the image."""
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    area = smallest + (1 - smallest) * u[:, 0]
    lo = area.clamp(min=CROP_ASPECT[0]).log()  # height = sqrt(area / aspect) <= 1
    hi = area.reciprocal().clamp(max=CROP_ASPECT[1]).log()  # width = sqrt(area * aspect) <= 1
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # clamp: rounding only
    return torch.stack([w, h, u[:, 2] * (1 - w), u[:, 3] * (1 - h)], 1)


def crop(x: torch.Tensor, boxes: torch.Tensor, smallest: float = 0.0) -> torch.Tensor:
    """Each (N, C, H, W) image's box (crop_boxes' fractions) resized to the whole image: bilinear, no antialias
    (torchvision's resized_crop with antialias=False inside the box; edge pixels clamp); returns float32."""
    b = boxes.to(x.device, torch.float32)
    w, h, zero = b[:, 0], b[:, 1], torch.zeros_like(b[:, 0])
    # grid_sample's theta maps the output's [-1, 1] to the input's: a box of width w starting at x0 is centred at
    # 2 x0 + w - 1
    theta = torch.stack([torch.stack([w, zero, 2 * b[:, 2] + w - 1], 1),
                         torch.stack([zero, h, 2 * b[:, 3] + h - 1], 1)], 1)
    return resample(x, theta, "border")


# flip before shift: the pixel moves are exact on the uint8 images; crop and rotation resample them, last
AUGMENTATIONS: dict[str, Augmentation] = {a.field: a for a in (
    Augmentation("flip", draw=lambda g, n, on: torch.randint(0, 2, (n,), generator=g), apply=flip),
    Augmentation("shift", draw=lambda g, n, pixels: torch.randint(-pixels, pixels + 1, (n, 2), generator=g),
                 apply=shift),
    Augmentation("crop", draw=crop_boxes, apply=crop),
    Augmentation("rotate", apply=rotate,
                 draw=lambda g, n, degrees: (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)
                 * math.radians(degrees)),
)}
