"""Query results on the terminal, one way for every query command (sql, cone, xmatch): a table
that fits the terminal, or one record per block when it would not (psql's expanded display),
never a value cut or a number shortened; tab-separated values when stdout is not a terminal,
so ``| sort`` and ``> file.tsv`` get every value in full.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: at most this many rows are drawn as a table on a terminal (the rest still count); a
#: larger result belongs in a file (--output) or a pipe, which get every row
TERMINAL_ROWS = 1000


def text(value) -> str:
    """A value as the terminal and TSV show it: NULL as NULL (TSV: empty), floats round-trip."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join("NULL" if v is None else text(v) for v in value) + "}"
    return str(value)


def plural(n: int, word: str) -> str:
    """'1 row', '2 rows', '2 matches'."""
    if n == 1:
        return f"{n:,} {word}"
    return f"{n:,} {word}es" if word.endswith(("s", "sh", "ch", "x", "z")) else f"{n:,} {word}s"


def show(console: Console, names: Sequence[str], rows: Iterable[Sequence], what: str = "row") -> int:
    """Print a result; the row count goes to stderr.  Returns the number of rows."""
    if not sys.stdout.isatty():
        return _tsv(names, rows, what)
    shown, n = [], 0
    for row in rows:
        n += 1
        if n <= TERMINAL_ROWS:
            shown.append(["NULL" if v is None else text(v) for v in row])
    widths = [max([len(name)] + [len(r[i]) for r in shown]) for i, name in enumerate(names)]
    if sum(widths) + 3 * len(widths) + 1 <= console.width:
        t = Table(*[escape(n) for n in names], show_lines=False, highlight=False)
        for col in t.columns:
            col.overflow, col.no_wrap = "fold", True
        for r in shown:
            t.add_row(*[escape(v) for v in r])
        console.print(t)
    else:                                       # too wide: one block per row, name | value
        label = max(len(name) for name in names)
        for i, r in enumerate(shown, 1):
            console.print(f"[bold]-[ row {i} ]" + "-" * max(0, min(console.width, 40) - 12 - len(str(i))),
                          highlight=False)
            for name, v in zip(names, r):
                console.print(f"{escape(name):<{label}} | {escape(v)}", highlight=False, overflow="fold")
    extra = f" (the first {TERMINAL_ROWS:,} shown: use --output FILE or a pipe for all)" if n > TERMINAL_ROWS else ""
    print(plural(n, what) + extra, file=sys.stderr)
    return n


def _tsv(names: Sequence[str], rows: Iterable[Sequence], what: str) -> int:
    n = 0
    try:
        print("\t".join(names))
        for row in rows:
            print("\t".join("" if v is None else text(v) for v in row))
            n += 1
        sys.stdout.flush()
    except BrokenPipeError:                  # | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return n
    if list(names) != ["count"]:
        print(plural(n, what), file=sys.stderr)
    return n
