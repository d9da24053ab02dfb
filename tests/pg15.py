"""Debian's PostgreSQL server with its extension packages, for the tests that need q3c or Citus.

scripts/provision.sh installs postgresql-15 and postgresql-15-q3c (and builds Citus).  A test
needing them fails when they are missing, saying what to install: like the SLURM test, it
never skips (a skipped test proves nothing).
"""
import pytest

import localpg


def require_extension(name: str, packages: str) -> None:
    """Fail, naming what to install, unless the system server has the extension ``name``."""
    if localpg.bindir("15") is not None and localpg.has_extension(name, "15"):
        return
    pytest.fail(f"the {name} extension for Debian's PostgreSQL 15 is not installed ({packages}): "
                "run scripts/provision.sh as root (it installs them)")
