"""The config reference, generated from the schema: ``docs/config.md`` is this module's output.

Every section of ``ExperimentConfig`` becomes a heading with its class docstring and a table of its keys:
type, default and the comments written beside the field in the schema (the lines of comment just
above a field and the one after it on its line). Nothing here is kept by hand: ``make docs`` rewrites the
file, and a test fails when it is out of date.

Usage: python -m diffdfkd.config.reference [OUT]   (default: print to stdout)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

from diffdfkd.config.loader import to_dict
from diffdfkd.config.schema import ExperimentConfig

HEADER = """\
# Config reference

Generated from the schema (`src/diffdfkd/config/schema.py`, `methods.py`) by `make docs`
(`python -m diffdfkd.config.reference`); do not edit by hand. A run reads one YAML file of these keys (`--config configs/digits.yaml`; unknown
keys are errors naming the valid ones) and `key.sub=value` overrides after it on the command line, e.g.
`diffdfkd run --config configs/digits.yaml guidance.step_size=0.2 synth.images_per_class=50`. Empty
teacher and generator fields mean the world's shipped parts. Every output folder records the resolved
config in `config.yaml`.
"""


def field_comments(cls: type) -> dict[str, str]:
    """The comments of each field of dataclass ``cls`` in its source: the comment lines just above the
    field and the comment ending its line, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line (1-based) -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    (node,) = ast.parse(source).body
    found: dict[str, str] = {}
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        above = []
        line = statement.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        inline = comments.get(statement.end_lineno) if statement.end_lineno in code_lines else None
        found[statement.target.id] = " ".join([*above, *([inline] if inline else [])])
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(cls: type, prefix: str) -> list[str]:
    comments = field_comments(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_default(f)) or isinstance(_default(f), dict):
            continue  # a section: its own heading
        default = json.dumps(list(_default(f)) if isinstance(_default(f), tuple) else _default(f))
        lines.append(
            f"| `{prefix}{f.name}` | `{_cell(str(f.type))}` | `{_cell(default)}` | {_cell(comments.get(f.name, ''))} |"
        )
    return lines


def _docstring(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "")


def config_reference() -> str:
    """``docs/config.md``: the top-level keys, then one section per component of ``ExperimentConfig``."""
    out = [HEADER, "## Top level", "", _docstring(ExperimentConfig), "", *_table(ExperimentConfig, ""), ""]
    hints = typing.get_type_hints(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        section = hints[f.name]
        if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
            continue
        out += [f"## `{f.name}`", "", _docstring(section), "", *_table(section, f"{f.name}."), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = config_reference()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
