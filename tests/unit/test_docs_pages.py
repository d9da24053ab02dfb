"""The README and the documentation's pages, read as text: a front page, every code block
marked run or not run, references that follow the code (tests/integration/test_docs.py builds
the site and runs the examples)."""
from __future__ import annotations

import argparse
import inspect
import re

import pytest

from docs_examples import ROOT, all_blocks

from desi_loader.cli import GUIDE, build_parser


# -- the front page --------------------------------------------------------------------------

def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.findall(r"20\d\d-[01]\d-[0-3]\d", text), "dated entries belong in the changelog or the lab notebook"
    assert "../" not in text, "the README names nothing outside the repository"
    for word in ("heap_getattr", "hint bit", "malloc", "attcacheoff"):
        assert word not in text, f"internals ({word}) belong in docs/internals"


def test_readme_and_pages_link_to_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# -- the examples ----------------------------------------------------------------------------

def test_every_code_block_is_marked_run_or_not_with_a_reason():
    unmarked = [f"{b.page}:{b.line}" for b in all_blocks() if b.kind is None or not b.label]
    assert not unmarked, f"mark these '% example: NAME' or '% not run: REASON': {unmarked}"


def test_every_named_example_is_run_by_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    names = {b.label for b in all_blocks() if b.kind == "example" and b.label != "sql"}
    unrun = sorted(n for n in names if f'"{n}"' not in sources)
    assert not unrun, f"examples no test runs: {unrun}"
    assert len(names) >= 10


# -- references generated from the code ------------------------------------------------------

def test_every_summary_key_is_in_the_summary_json_reference():
    from desi_loader.control.summary import Summary
    page = (ROOT / "docs" / "reference" / "summary-json.md").read_text()
    missing = [k for k in Summary().as_dict() if f"`{k}`" not in page]
    assert not missing, missing


@pytest.mark.parametrize("name", ["load", "query", "tap_url"])
def test_the_api_reference_functions_have_numpydoc_docstrings(name):
    from numpydoc.docscrape import FunctionDoc
    import desi_loader
    func = getattr(desi_loader, name)
    doc = FunctionDoc(func)
    assert doc["Summary"] and doc["Returns"] and doc["Examples"]
    documented = {p.name.split(":")[0].strip().lstrip("*") for p in doc["Parameters"]}
    wanted = {p for p in inspect.signature(func).parameters}
    assert wanted <= documented, wanted - documented


def test_every_help_ends_with_its_guide_page():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(GUIDE) == {"", *subs.choices}
    for name, sub in [("", parser), *subs.choices.items()]:
        last = sub.format_help().rstrip().splitlines()[-1]
        page = ROOT / "docs" / f"{GUIDE[name]}.md"
        assert page.is_file() and last.endswith(str(page)), (name, last)
