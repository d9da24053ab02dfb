"""Debian's PostgreSQL server with its extension packages, for the tests that need q3c or Citus.

scripts/provision.sh installs postgresql-15 and postgresql-15-q3c (and builds Citus).  A test
needing them fails when they are missing on a machine where provisioning could have
installed them (root with apt-get: CI), and skips, saying why, only where it could not.
"""
import os
import shutil

import pytest

from desi_loader import localpg


def could_provision() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


def require_extension(name: str, packages: str) -> None:
    """Fail (or skip where nothing could install them) unless the system server has ``name``."""
    if localpg.bindir("15") is not None and localpg.has_extension(name, "15"):
        return
    message = f"the {name} extension for Debian's PostgreSQL 15 is not installed ({packages})"
    if could_provision():
        pytest.fail(message + ": run scripts/provision.sh (it installs them)")
    pytest.skip(message + " and this machine cannot install it (needs root and apt-get)")
