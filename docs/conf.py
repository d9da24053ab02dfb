"""Sphinx configuration of the desi-loader documentation.

Build: ``pip install -e '.[docs]'`` then ``sphinx-build -W --keep-going docs docs/_build/html``
(the test suite does this in tests/integration/test_docs.py).  The command-line reference is generated
from the argparse parser (sphinx-argparse) and the Python API from the numpydoc docstrings
(autodoc), so neither can drift from the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desi_loader import __version__  # noqa: E402

project = "desi-loader"
author = "the desi-loader developers"
copyright = "the desi-loader developers, BSD-3-Clause"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinxarg.ext",
]

# no typographic quotes or dashes: "--dsn" stays two hyphens where a reader copies it
smartquotes = False

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ``{include}`` of CHANGELOG.md, heading anchors for links such as page.md#section
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# numpydoc: the API pages list what the docstrings say, no autosummary stubs
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"           # the numpydoc Parameters sections carry the types

html_theme = "furo"
html_title = f"desi-loader {__version__}"
html_static_path: list = []
html_show_sourcelink = False

# the site works offline: no intersphinx, nothing fetched at build time
