"""The one argument-parser style of every arcdist command: a bad argument is one line and exit status 2."""
from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`NAME: error: MESSAGE; see --help`, exit 2) instead of usage + error.

    `name` prefixes the line (default: `prog`), so it matches the command's own error lines.
    """

    def __init__(self, *args, name: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.name = name or self.prog

    def error(self, message: str):
        self.exit(2, f"{self.name}: error: {message}; see --help\n")
