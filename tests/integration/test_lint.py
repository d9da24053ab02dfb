"""The linter over the package, as part of the test command (ruff.toml: pycodestyle errors,
pyflakes, bugbear): a finding fails the suite with ruff's own report."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean_on_the_package():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "desi_loader"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
