"""`arcdist SUBCOMMAND ...`: one command for every tool (`python -m arcdist SUBCOMMAND ...` is the same thing).

    arcdist train      one training run in this process (several: accelerate launch arcdist/train.py ...)
    arcdist grid       variants x seeds x datasets side by side, or one job of a Slurm array
    arcdist report     a grid's tables and figures (report.md, report.html)
    arcdist explore    the interactive feature page of a run or grid
    arcdist evaluate   a checkpoint's figures again, plain and averaged over pixel shifts
    arcdist embed      features of a split or a folder of images by a run's checkpoint (npz)
    arcdist export     a run's backbone with its normalisation as ONNX or TorchScript
    arcdist plot       re-render a run's plots from its saved features
    arcdist variants   the variant table (what each row changes)
    arcdist config     every --set field: type, default, what it is (Markdown)
"""
from __future__ import annotations

import importlib
import sys

from arcdist import errors
from arcdist.errors import Exit

COMMANDS = {  # name -> (module with main(argv), one line of help)
    "train": ("arcdist.train", "one training run in this process (several: accelerate launch arcdist/train.py)"),
    "grid": ("arcdist.grid", "variants x seeds x datasets side by side, or one job of a Slurm array"),
    "report": ("arcdist.report.cli", "a grid's tables and figures (report.md, report.html)"),
    "explore": ("arcdist.explore.cli", "the interactive feature page of a run or grid"),
    "evaluate": ("arcdist.evaluation.evaluate", "a checkpoint's figures again, plain and averaged over pixel shifts"),
    "embed": ("arcdist.evaluation.embed", "features of a split or a folder of images by a run's checkpoint (npz)"),
    "export": ("arcdist.evaluation.export", "a run's backbone with its normalisation as ONNX or TorchScript"),
    "plot": ("arcdist.plot", "re-render a run's plots from its saved features"),
    "variants": ("arcdist.variants", "the variant table (what each row changes)"),
    "config": ("arcdist.reference", "every --set field: type, default, what it is (Markdown)"),
}


def usage() -> str:
    lines = ["usage: arcdist {" + ",".join(COMMANDS) + "} ...", "",
             "ArcFace-family heads on small ConvNets, trained with Accelerate (CPU, GPUs, nodes, Slurm).", "",
             "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "arcdist COMMAND --help shows a command's options; python -m arcdist COMMAND is the same."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return Exit.OK if argv else Exit.BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"arcdist: error: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}; see arcdist --help",
              file=sys.stderr)
        return Exit.BAD_INPUT
    return importlib.import_module(COMMANDS[name][0]).main(rest)


def run() -> None:
    """The console script: main(), then the exit a multi-process training needs (arcdist.errors.end_process)."""
    errors.end_process(main())


if __name__ == "__main__":
    run()
