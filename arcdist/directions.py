"""Evenly spread unit directions in d dimensions: W's `head.init=even` for any feature size.

d = 2: n directions at 360/n degrees (exact). d >= 3: the spread that (nearly) maximises the smallest angle
between any two directions (Tammes' problem), found by a fixed, seeded descent on a sharpening repulsion
energy, so it is the same on every machine and rank; then the directions are chained so that slot p + 1 is the
nearest unused direction to slot p (`head.order` places look-alike classes in neighbouring slots, as on the
circle). For n <= d + 1 the optimum is the regular simplex (smallest angle arccos(-1/(n-1))).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F


def circle(positions: torch.Tensor, slots: int) -> torch.Tensor:
    """Unit 2-D vectors at `positions` x 360/slots degrees."""
    angles = positions * (2 * math.pi / slots)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def spread(n: int, dim: int) -> torch.Tensor:
    """n unit vectors in `dim` dimensions (float32, (n, dim)), slot by slot; see the module docstring. About 1 s
    for 10 directions in 3-D, once per process; within 0.03 degrees of the known optima (10 in 3-D: 66.12 against
    Tammes' 66.15; 12: the icosahedron's 63.43)."""
    return _spread(n, dim).clone()


SMALL = 2_000_000  # n * n * dim up to which the exact float64 descent runs (every 10-class run: unchanged)
BUDGET = 6e10  # n * n * dim * steps of the large descent: 1,000 directions in 128-D in about 5 s on 2 cores
LARGE_STEPS = 1000  # at most: 2,000 took twice as long for a smallest angle within 0.05 degrees (results/performance-notes.md)
LARGE_VERSION = 2  # of the large descent, in its cache file's name: nodes never read a spread another version made


@functools.lru_cache(maxsize=32)
def _spread(n: int, dim: int, steps: int = 2000) -> torch.Tensor:
    if dim == 2:
        return circle(torch.arange(n, dtype=torch.float), n)
    if n * n * dim > SMALL:
        return _large(n, dim)
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    with torch.enable_grad():  # W's init runs under no_grad
        _descend(x, steps)
    return chain(F.normalize(x.detach(), dim=1)).float()


def _descend(x: torch.Tensor, steps: int) -> None:
    n = x.shape[0]
    opt = torch.optim.Adam([x], lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    off = ~torch.eye(n, dtype=torch.bool)
    for step in range(steps):
        sharp = 4.0 * 250.0 ** (step / steps)  # log-sum-exp of the cosines, sharpening towards their max
        u = F.normalize(x, dim=1)
        loss = torch.logsumexp(sharp * (u @ u.t())[off], 0) / sharp
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _large(n: int, dim: int) -> torch.Tensor:
    """Many directions (a thousand classes): the same energy in float32 for BUDGET / (n * n * dim) steps (at
    least 50), computed once per node and kept in the node's cache folder (arcdist.nodecache), chained as above."""
    from arcdist.nodecache import cache_dir, node_lock

    path = cache_dir() / "directions" / f"{n}x{dim}-v{LARGE_VERSION}.pt"
    with node_lock(path.with_suffix(".lock")):
        try:
            return torch.load(path)
        except (OSError, RuntimeError, EOFError):
            pass
        g = torch.Generator().manual_seed(0)
        x = F.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_(True)
        steps = max(50, min(LARGE_STEPS, int(BUDGET / (n * n * dim))))
        opt = torch.optim.Adam([x], lr=0.02)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        eye = torch.eye(n, dtype=torch.bool)
        with torch.enable_grad():
            for step in range(steps):
                sharp = 4.0 * 250.0 ** (step / steps)
                u = F.normalize(x, dim=1)
                loss = torch.logsumexp((sharp * (u @ u.t())).masked_fill(eye, -math.inf).flatten(), 0) / sharp
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        u = chain(F.normalize(x.detach(), dim=1))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(u, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        except OSError:
            pass
        return u


def chain(u: torch.Tensor) -> torch.Tensor:
    """Rows of `u` reordered so that each is the nearest unused one to the row before (starting from row 0)."""
    left = list(range(1, u.shape[0]))
    path = [0]
    while left:
        cos = u[left] @ u[path[-1]]
        path.append(left.pop(int(cos.argmax())))
    return u[path]


def min_angle_deg(u: torch.Tensor) -> float:
    """Smallest angle (degrees) between two rows of `u`."""
    u = F.normalize(u.double(), dim=1)
    cos = (u @ u.t()).fill_diagonal_(-1.0)
    return math.degrees(math.acos(float(cos.max().clamp(-1, 1))))


def margin_zones(angles: np.ndarray, margin: float) -> list[tuple[float, float]]:
    """Each direction's sector (start, end), in degrees, where an additive angular margin is met: a feature at
    angle t from its class's direction and g - t from a neighbour's meets ArcFace's theta_y + m < theta_j only
    where t < (g - m) / 2 on that side; (a, a), nothing, where the margin is as wide as both gaps (or another
    direction coincides)."""
    a = np.asarray(angles, dtype=float) % 360.0
    order = np.argsort(a, kind="stable")
    ranked = a[order]
    after = (np.roll(ranked, -1) - ranked) % 360.0 if len(a) > 1 else np.full(1, 360.0)
    before = np.roll(after, 1)
    zones = [(0.0, 0.0)] * len(a)
    for i, r, gb, ga in zip(order, ranked, before, after):
        open_ = min(gb, ga) > 0
        zones[i] = (float(r - open_ * max(0.0, (gb - margin) / 2)), float(r + open_ * max(0.0, (ga - margin) / 2)))
    return zones


def margin_caps(weight: np.ndarray, margin: float) -> np.ndarray:
    """Each row's cap radius (radians) inside which an additive angular margin is met against every other row: at
    angle t from its direction, t + m < theta_j holds for all j where t < (d - m) / 2, d the angle to the nearest
    other direction (the largest cap inside the region, which is a polygon above 2-D); 0 where m >= d."""
    w = np.asarray(weight, dtype=np.float64)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    cos = w @ w.T
    np.fill_diagonal(cos, -1.0)
    nearest = np.arccos(np.clip(cos.max(1), -1.0, 1.0)) if len(w) > 1 else np.full(len(w), math.pi)
    return np.maximum(0.0, (nearest - margin) / 2)
