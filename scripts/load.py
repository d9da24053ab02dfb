#!/usr/bin/env python
"""python scripts/load.py ARGS == desi-loader load ARGS."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from desi_loader.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["load"] + sys.argv[1:]))
