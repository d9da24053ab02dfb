"""The ``desi-loader`` command's entry point: ``--version`` answers at once, everything else
goes to cli.main (whose imports take about a second)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from . import __version__
        print(f"desi-loader {__version__}")
        return 0
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
