#!/usr/bin/env python
"""python scripts/load.py ARGS == desi-loader load ARGS."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

if __name__ == "__main__":
    # imported here, not above: each worker process (spawned) runs this file's top level
    # again, and needs none of the CLI (0.6 s of imports: astropy, rich) before its own
    from desi_loader.cli import main
    sys.exit(main(["load"] + sys.argv[1:]))
