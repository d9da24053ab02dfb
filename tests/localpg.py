"""A PostgreSQL server from the system's binaries (Debian's postgresql-NN) in a directory.

The embedded server (server.py) has no extensions beyond contrib; the q3c sky index and
Citus clusters need the Debian server with their packages.  This module starts such a
server on a loopback port for the tests and the benchmarks: ``initdb`` on first use,
``pg_ctl start`` with the given settings, as the ``postgres`` system user when run as
root (the server refuses root).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from desi_loader.errors import DatabaseError

#: settings of a throwaway local server (no durability needed beyond a crash test)
LOCAL_SETTINGS = {"max_connections": "100", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
                  "maintenance_work_mem": "256MB", "listen_addresses": "'127.0.0.1'"}


def bindir(version: Optional[str] = None) -> Optional[Path]:
    """The newest /usr/lib/postgresql/*/bin with a server (or that of ``version``)."""
    pattern = f"/usr/lib/postgresql/{version or '*'}/bin/postgres"
    found = sorted(glob.glob(pattern), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def has_extension(name: str, version: Optional[str] = None) -> bool:
    """True when the system server has the extension's control file."""
    bd = bindir(version)
    if bd is None:
        return False
    share = subprocess.run([str(bd / "pg_config"), "--sharedir"], capture_output=True, text=True)
    sharedir = share.stdout.strip() if share.returncode == 0 else f"/usr/share/postgresql/{bd.parent.name}"
    return os.path.exists(os.path.join(sharedir, "extension", f"{name}.control"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> list:
    """Command prefix running a program as the unprivileged server user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise DatabaseError("running as root and there is no 'postgres' system user to run the server",
                            "install Debian's postgresql package, or run as another user") from exc
    return ["runuser", "-u", "postgres", "--"]


def base_dir() -> Path:
    """A directory the server user can enter (pytest's tmp dirs are private to root)."""
    d = Path(tempfile.gettempdir()) / f"desi-loader-pg-{os.getuid()}"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    return d


def _run(args: Sequence[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise DatabaseError(f"{' '.join(map(str, args[-3:]))} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def start(data_dir: Path, port: int, settings: Optional[dict] = None, version: Optional[str] = None,
          preload: Sequence[str] = (), checksums: bool = False) -> str:
    """Start (initdb on first use, with data checksums when ``checksums``) a server in
    ``data_dir`` on 127.0.0.1:``port``; its URI."""
    bd = bindir(version)
    if bd is None:
        raise DatabaseError("no PostgreSQL server binaries under /usr/lib/postgresql",
                            "apt-get install postgresql-15 (scripts/provision.sh does)")
    data_dir = Path(data_dir)
    prefix = _as_server_user()
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if prefix:
            shutil.chown(data_dir, "postgres", "postgres")
        os.chmod(data_dir, 0o700)
        _run(prefix + [str(bd / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust",
                       "--no-sync", "-E", "UTF8"] + (["--data-checksums"] if checksums else []))
    opts = dict(LOCAL_SETTINGS)
    opts.update(settings or {})
    opts["port"] = str(port)
    opts["unix_socket_directories"] = f"'{data_dir}'"
    if preload:
        opts["shared_preload_libraries"] = "'" + ",".join(preload) + "'"
    conf = "\n".join(f"{k} = {v}" for k, v in opts.items()) + "\n"
    auto = data_dir / "postgresql.auto.conf"
    tmp = base_dir() / f"auto-{port}.conf"
    tmp.write_text("# written by desi_loader.localpg\n" + conf)
    _run(prefix + ["cp", str(tmp), str(auto)])
    tmp.unlink()
    log = data_dir / "server.log"
    status = subprocess.run(prefix + [str(bd / "pg_ctl"), "-D", str(data_dir), "status"], capture_output=True)
    if status.returncode != 0:                # not running yet (a running one keeps its settings)
        _run(prefix + [str(bd / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-w", "-t", "120", "start"])
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def stop(data_dir: Path, mode: str = "fast", version: Optional[str] = None) -> None:
    """Stop the server of ``data_dir`` (``immediate`` is a crash)."""
    bd = bindir(version)
    if bd is None or not (Path(data_dir) / "postmaster.pid").exists():
        return
    subprocess.run(_as_server_user() + [str(bd / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "stop"],
                   capture_output=True, text=True)


def restart(data_dir: Path, mode: str = "fast", version: Optional[str] = None) -> None:
    bd = bindir(version)
    _run(_as_server_user() + [str(bd / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "-t", "120",
                              "-l", str(Path(data_dir) / "server.log"), "restart"])


def citus_cluster(base: Path, ports: Sequence[int], version: str = "15") -> str:
    """A Citus cluster on one machine: a coordinator on ports[0], workers on the others.

    Each node is a server of its own (data directory base/nodeN) with citus preloaded;
    the coordinator knows the workers (citus_add_node).  Restarting an existing cluster
    keeps its data.  Returns the coordinator's URI.
    """
    import psycopg2
    uris = [start(Path(base) / f"node{i}", port, version=version, preload=("citus",),
                  settings={"max_prepared_transactions": "100", "citus.shard_count": "8"})
            for i, port in enumerate(ports)]
    for uri in uris:
        conn = psycopg2.connect(uri)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS citus")
        conn.close()
    conn = psycopg2.connect(uris[0])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (ports[0],))
        for port in ports[1:]:
            cur.execute("SELECT 1 FROM pg_dist_node WHERE nodename = '127.0.0.1' AND nodeport = %s", (port,))
            if cur.fetchone() is None:
                cur.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))
    conn.close()
    return uris[0]
