"""Where an epoch's time goes: wall-clock seconds per named part, summed over a run (summary.json's `time_s`)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Stopwatch:
    """`with watch("evaluation"): ...` adds the block's seconds to that part; `watch.add(part, s)` adds seconds
    measured elsewhere; `watch.seconds()` is every part's total, rounded to 0.1 s."""

    def __init__(self) -> None:
        self._total: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - t0)

    def add(self, part: str, seconds: float) -> None:
        self._total[part] = self._total.get(part, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self._total.items()}
