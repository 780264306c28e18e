"""The config reference, generated from the code: `arcdist config --markdown` (docs/configuration.md).

Every field `--set SECTION.FIELD=VALUE` takes: its type, its default, and the comment written beside it (or on
the lines just above it) in the dataclass. tests/test_docs.py fails when the committed page differs.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing

from arcdist.config import Config
from arcdist.heads import HEADS, HeadConfig

HEADER = """# Configuration reference

**You want to** change one setting of a run: every field it takes, as `--set SECTION.FIELD=VALUE` (repeatable;
`arcdist train --set head.margin=0.3`). A variant (`arcdist variants`) is a set of these values; a run records all of them in its `config.json`. Generated
by `arcdist config --markdown` from the dataclasses in `arcdist/config.py` and `arcdist/heads/`; do not edit by
hand (tests/test_docs.py compares).
"""


def field_notes(cls: type) -> dict[str, str]:
    """Field name -> the comment beside it, else the comment lines right above it, from the source of the class
    and of the classes it derives from (the class body up to its first method)."""
    notes: dict[str, str] = {}
    for base in reversed(cls.__mro__[:-1]):
        notes.update(_own_notes(base))
    return notes


def _own_notes(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes, pending = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(("def ", "@")) and line.startswith("    ") and not line.startswith("     "):
            break
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        m = re.match(r"\s+(\w+): [^=]+=.*?(?:#\s*(.*))?$", line)
        if m and not stripped.startswith(("def ", "return", "@")):
            notes[m.group(1)] = (m.group(2) or " ".join(pending)).strip()  # its own comment, else the one above
        pending = []
    return notes


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple or tp is tuple:
        return "tuple"
    return getattr(tp, "__name__", str(tp))


def _rows(section: str, cls: type, instance) -> list[str]:
    hints, notes = typing.get_type_hints(cls), field_notes(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in ("params", "variant") or f.name not in hints:
            continue
        default = getattr(instance, f.name)
        note = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{section}.{f.name}` | {_type_name(hints[f.name])} | `{default!r}` | {note} |")
    return rows


def markdown() -> str:
    cfg = Config()
    out = [HEADER]
    for section in ("model", "optim", "data", "train"):
        sub = getattr(cfg, section)
        out += [f"## {section}", "", "| field | type | default | what it is |", "| --- | --- | --- | --- |",
                *_rows(section, type(sub), sub), ""]
    out += ["## head", "", "The fields every head kind shares (`head.kind` picks the kind, with its own defaults):", "",
            "| field | type | default | what it is |", "| --- | --- | --- | --- |",
            *_rows("head", HeadConfig, HeadConfig()), ""]
    for kind, cls in HEADS.items():
        own = cls.Config()
        rows = _rows("head", cls.Config, own)
        if rows:
            out += [f"### head.kind={kind}", "", "| field | type | default | what it is |", "| --- | --- | --- | --- |",
                    *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from arcdist.cli import ArgumentParser
    from arcdist.errors import Exit

    p = ArgumentParser(prog="arcdist.config", description=__doc__)
    p.add_argument("--markdown", action="store_true", help="the reference as Markdown (the only form)")
    p.parse_args(argv)
    sys.stdout.write(markdown())
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
