"""Worker of tests/test_heads.py, started by torchrun with 2 processes (gloo): every head kind trains one epoch of
a tiny L-* run in one process group; rank 0 writes what the test checks to the JSON file named by argv[2]."""
import json
import sys
from pathlib import Path

import torch

from arcdist.config import apply_overrides
from arcdist.heads import HEADS
from arcdist.train import Trainer, setup_accelerator
from arcdist.variants import get_variant


def main(data_dir: str, out: str) -> None:
    t0 = get_variant("T0").config.model  # the test backbone: the heads are what this checks
    base = apply_overrides(get_variant("L-arcface").config,
                           [f"data.data_dir={data_dir}", "data.batch_size=64", "train.mixed_precision=no",
                            "train.channels_last=false", "train.epochs=1", "train.cpu=true",
                            f"model.layers={t0.layers!r}", f"model.fc={t0.fc!r}"])
    base, acc, _ = setup_accelerator(base)
    found = {}
    for kind in HEADS:
        cfg = apply_overrides(base, [f"head.kind={kind}"])
        trainer = Trainer(cfg, Path(out).parent / kind, acc, no_progress=True)
        before = {k: v.clone() for k, v in trainer.head_module.state_dict().items()}
        stats = trainer.train_epoch(0)
        metrics, feats, labels = trainer.evaluate()
        after = trainer.head_module.state_dict()
        mine = torch.cat([v.flatten().float() for v in after.values()])
        both = acc.gather(mine[None])  # every rank's head: they must be equal
        found[kind] = dict(rows=len(feats), labels=labels.tolist(), loss=stats.get("train_loss"),
                           accuracy=metrics["accuracy"], keys=sorted(after),
                           changed=sorted(k for k in after if not torch.equal(after[k], before[k])),
                           ranks_equal=bool(torch.equal(both[0], both[1])), world=acc.num_processes)
    if acc.is_main_process:
        Path(out).write_text(json.dumps(found))
    acc.wait_for_everyone()
    # a gloo group left alive at exit can abort a rank ("terminate called without an active exception")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
