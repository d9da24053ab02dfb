"""The type checker over the package, as part of the test command (setup.cfg [mypy]): a
finding fails the suite with mypy's own report."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_is_clean_on_the_package():
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "desi_loader"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
