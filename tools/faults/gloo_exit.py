"""The abort's mechanism without arcdist: a 2-rank gloo program that leaves with work in flight.

    torchrun --nproc_per_node 2 tools/faults/gloo_exit.py teardown   # returns from main: the interpreter finalizes
    torchrun --nproc_per_node 2 tools/faults/gloo_exit.py arcdist    # the same work, then arcdist's way out

Each rank all-reduces a few tensors, then starts one more all-reduce without waiting for it and drops its own
reference, so gloo's worker thread holds the last one. `teardown` then returns: if that thread releases the tensor
while the interpreter finalizes, it asks for the GIL, Python ends it with pthread_exit, and the C++ runtime aborts
("terminate called without an active exception"; pytorch/pytorch#190489). `arcdist` ends as arcdist.train does:
the process group destroyed, then `arcdist.errors.end_process` (os._exit for a rank of a multi-process run).
`tools/faults/exit_abort.py --program gloo-teardown|gloo-arcdist` counts how each way ends over many runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(mode: str) -> int:
    dist.init_process_group("gloo")
    for _ in range(4):
        dist.all_reduce(torch.ones(1 << 16))
    dist.all_reduce(torch.ones(1 << 20), async_op=True)  # in flight; gloo's thread holds the last reference
    if mode == "arcdist":
        from arcdist.errors import end_process

        dist.destroy_process_group()
        end_process(0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("teardown", "arcdist"):
        print("usage: gloo_exit.py teardown|arcdist", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
