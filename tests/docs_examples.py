"""The code blocks of the README and the documentation, each with its mark.

A block is marked by the line before it: ``% example: NAME`` (a MyST comment) or
``<!-- example: NAME -->`` (the README, where GitHub hides it) for a block a test runs as
written, ``% not run: REASON`` or ``<!-- not run: REASON -->`` for one it cannot run.  An
example named ``sql`` is run by tests/test_docs.py's SQL walk; any other name must be run by a
test that asks for it with ``example("NAME")``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

#: the pages whose code blocks are examples a reader follows (the lab notebook and the
#: architecture's diagram are not)
PAGES = ["README.md", "docs/getting-started.md", *sorted(str(p.relative_to(ROOT)) for p in
                                                         (ROOT / "docs" / "guide").glob("*.md")),
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "reference").glob("*.md")),
         "docs/benchmarks/index.md"]

_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
_MARK = re.compile(r"^(?:%\s*|<!--\s*)(example|not run):\s*(.*?)\s*(?:-->)?\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int                  # 1-based line of the opening fence
    lang: str
    code: str
    kind: Optional[str]        # "example", "not run" or None (unmarked)
    label: str                 # the example's name, or the reason it is not run


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` (directives such as ```{toctree} are not code)."""
    lines = (ROOT / page).read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```{"):          # a directive: skip to its end
            i = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```")) + 1
            continue
        m = _FENCE.match(lines[i])
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            prev = lines[i - 1] if i else ""
            mark = _MARK.match(prev)
            out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n",
                             mark.group(1) if mark else None, mark.group(2) if mark else ""))
            i = end + 1
        else:
            i += 1
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def example(name: str) -> Block:
    """The one block marked ``example: name``."""
    found = [b for b in all_blocks() if b.kind == "example" and b.label == name]
    assert len(found) == 1, f"example {name!r}: {len(found)} blocks carry that name"
    return found[0]


def commands(block: Block) -> list[list[str]]:
    """The ``desi-loader`` command lines of a shell block, as argument lists (comments off)."""
    out = []
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "desi-loader":
            out.append(words[1:])
    return out


def sql_statements(block: Block) -> list[str]:
    return [s.strip() for s in block.code.split(";") if s.strip()]
