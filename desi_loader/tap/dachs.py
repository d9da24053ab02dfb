"""A GAVO DaCHS instance of the loader's own: its directory, configuration and database
profiles, and the ``dachs`` commands run in it (init, imp -m, serve start/stop, expire).

DaCHS runs on the system's Python (Debian's ``gavodachs2-server``); the loader only runs its
``dachs`` command with ``GAVOSETTINGS`` pointing at the instance's ``etc/gavo.rc``, so an
instance never touches a system-wide DaCHS (/etc/gavo.rc, /var/gavo) or its roles.  One
instance serves one database; its DaCHS roles are named after that database.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psycopg2.extensions

from ..errors import DatabaseError, LoaderError, UsageError

#: how long the server gets to answer after ``dachs serve start`` (it loads the system RDs
#: first: about 3 s on 2 cores)
START_TIMEOUT_S = 60

#: DaCHS's defaults (60 s for a sync query, 20,000 rows unless MAXREC asks for more) kept;
#: the hard limit is DaCHS's own too
SYNC_TIMEOUT_S = 60


def default_dir() -> Path:
    """$XDG_DATA_HOME/desi-loader/tap, beside the embedded server's pgdata."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "desi-loader" / "tap"


def registry() -> Path:
    """The instances ``tap publish`` set up on this machine, the last published first: how
    ``tap url``, ``status``, ``stop`` and ``desi_loader.tap_url()`` find an instance that was
    published with ``--tap-dir`` without being told it again."""
    return default_dir().parent / "tap-instances.json"


def remember(root: Path) -> None:
    """Put the instance in ``root`` first in the registry."""
    root = Path(root).absolute()
    known = [str(root)] + [r for r in _registered() if r != str(root)]
    registry().parent.mkdir(parents=True, exist_ok=True)
    _write(registry(), json.dumps(known, indent=2) + "\n")


def _registered() -> list:
    try:
        known = json.loads(registry().read_text())
    except (OSError, ValueError):
        return []
    return [r for r in known if isinstance(r, str)] if isinstance(known, list) else []


def find(tap_dir: Optional[str] = None) -> "Instance":
    """The instance in ``tap_dir`` when given; else the last one published on this machine
    that still exists; else the default directory's (which may not exist yet)."""
    if tap_dir:
        return Instance(Path(tap_dir).absolute())
    for root in _registered():
        inst = Instance(Path(root))
        if inst.exists():
            return inst
    return Instance(default_dir())


def missing(inst: "Instance") -> UsageError:
    """The error for an instance that is not there, naming the argument that finds another."""
    return UsageError(f"no TAP service in {inst.root}",
                      "desi-loader tap publish creates it; for an instance in another directory, "
                      "give --tap-dir DIR (Python: tap_url(tap_dir=DIR))")


def dachs_command() -> str:
    path = shutil.which("dachs")
    if path is None:
        raise UsageError("GAVO DaCHS is not installed (no 'dachs' command)",
                         "apt-get install gavodachs2-server postgresql-15-pgsphere postgresql-15-q3c "
                         "(scripts/provision.sh installs them)")
    return path


@dataclass(frozen=True)
class Target:
    """The database an instance serves, from a libpq DSN."""

    host: str
    port: int
    dbname: str
    user: str

    @classmethod
    def of(cls, conn: psycopg2.extensions.connection) -> "Target":
        p = conn.get_dsn_parameters()
        host = p.get("host") or "localhost"
        if host.startswith("/"):             # a Unix socket: DaCHS connects over TCP to this host
            host = "localhost"
        return cls(host, int(p.get("port") or 5432), p["dbname"], p["user"])

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


def role_prefix(dbname: str) -> str:
    """DaCHS's roles of an instance: dl_<database>_admin, _query, _untrusted (server-wide
    names, so one per database, never DaCHS's own gavoadmin/gavo/untrusted)."""
    return "dl_" + re.sub(r"[^a-z0-9_]", "_", dbname.lower())[:40] + "_"


@dataclass(frozen=True)
class Instance:
    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "etc" / "gavo.rc"

    @property
    def state_file(self) -> Path:
        return self.root / "instance.json"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def _save(self, state: dict) -> None:
        _write(self.state_file, json.dumps(state, indent=2) + "\n")

    def rd_path(self, schema: str) -> Path:
        return self.root / "inputs" / schema / "q.rd"

    @property
    def url(self) -> str:
        s = self.state()
        return f"http://{s['host']}:{s['port']}"

    def env(self) -> dict:
        return {**os.environ, "GAVOSETTINGS": str(self.settings), "GAVOCUSTOM": str(self.root / "etc" / "none"),
                "HOME": os.environ.get("HOME", str(self.root))}

    # -- creation -----------------------------------------------------------------------

    def create(self, target: Target, host: str, port: int, dsn: str) -> None:
        """Write the configuration and profiles (the database part is ``init``)."""
        etc = self.root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        prefix = role_prefix(target.dbname)
        admin_pw = secrets.token_urlsafe(18)
        _write(self.settings, GAVO_RC.format(root=self.root, host=host, port=port, admin=admin_pw,
                                            timeout=SYNC_TIMEOUT_S))
        _write(etc / "dsn", f"database = {target.dbname}\nhost = {target.host}\nport = {target.port}\n")
        for profile, role in (("feed", "admin"), ("trustedquery", "query"), ("untrustedquery", "untrusted")):
            if not (etc / profile).exists():     # kept on a second publish: the roles have these passwords
                _write(etc / profile, f"include dsn\nuser = {prefix}{role}\npassword = {secrets.token_urlsafe(24)}\n")
        state = {"database": target.label, "dsn": dsn, "host": host, "port": port, "roles": prefix, "schemas": []}
        self._save(state)

    def set_port(self, host: str, port: int, dsn: str) -> None:
        text = self.settings.read_text()
        text = re.sub(r"(?m)^serverPort:.*$", f"serverPort: {port}", text)
        text = re.sub(r"(?m)^bindAddress:.*$", f"bindAddress: {host}", text)
        text = re.sub(r"(?m)^serverURL:.*$", f"serverURL: http://{host}:{port}", text)
        _write(self.settings, text)
        self._save({**self.state(), "host": host, "port": port, "dsn": dsn})

    def add_schema(self, schema: str) -> None:
        s = self.state()
        if schema not in s["schemas"]:
            s["schemas"] = sorted(s["schemas"] + [schema])
            self._save(s)

    def profile_for(self, role: str) -> str:
        """A DaCHS profile naming database role ``role`` (DaCHS grants by profile)."""
        name = "dl_role_" + re.sub(r"[^a-zA-Z0-9_]", "_", role)[:40]
        _write(self.root / "etc" / name, f"include dsn\nuser = {role}\n")
        return name

    def profile_dsn(self, profile: str) -> str:
        """A libpq DSN connecting as one of DaCHS's profiles (etc/dsn + etc/PROFILE)."""
        keys = {}
        for name in ("dsn", profile):
            for line in (self.root / "etc" / name).read_text().splitlines():
                key, _, value = line.partition("=")
                if value and key.strip() != "include":
                    keys[key.strip()] = value.strip()
        names = {"database": "dbname"}
        return " ".join(f"{names.get(k, k)}='{v}'" for k, v in keys.items())

    def admin_role(self) -> str:
        return self.state()["roles"] + "admin"

    def query_roles(self) -> tuple:
        r = self.state()["roles"]
        return r + "query", r + "untrusted"

    # -- dachs commands -----------------------------------------------------------------

    def run(self, *args: str, timeout: float = 600) -> str:
        """Run ``dachs ARGS`` in this instance; its output, or a LoaderError with its message."""
        proc = subprocess.run([dachs_command(), *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.root))
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise LoaderError(f"dachs {' '.join(args)} failed: {_dachs_error(out)}",
                              f"the full output is in {self.root / 'logs'}; dachs -h {args[0]} explains it")
        return out

    def init(self, admin_dsn: str) -> None:
        """Create DaCHS's roles, its schemas (dc, tap_schema, ivoa, uws) and pgsphere in the
        database, connecting with ``admin_dsn`` (a superuser: DaCHS creates roles and the
        pgsphere extension)."""
        self.run("init", "-d", _kv_dsn(admin_dsn))

    def imp_meta(self, schema: str) -> str:
        return self.run("imp", "-m", f"{schema}/q")

    # -- the server ---------------------------------------------------------------------

    def pid(self) -> Optional[int]:
        f = self.root / "state" / "web.pid"
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if os.path.exists(f"/proc/{pid}") else None

    def running(self) -> bool:
        return self.pid() is not None and self.answers()

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/tap/availability", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        if self.running():
            return
        if self.pid() is not None:            # running, but not where the configuration says (--port changed)
            self.run("serve", "stop")
        (self.root / "state" / "web.pid").unlink(missing_ok=True)
        self.run("serve", "start")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if time.monotonic() > deadline:
                log = self.root / "logs" / "server.stderr"
                tail = log.read_text()[-600:] if log.exists() else ""
                raise LoaderError(f"the DaCHS server did not answer at {self.url} within {START_TIMEOUT_S} s"
                                  + (f": {tail.strip().splitlines()[-1]}" if tail.strip() else ""),
                                  f"see {log}; is port {self.state()['port']} taken? (--port)")
            time.sleep(0.3)

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        self.run("serve", "stop")
        return True

    def expire(self, schema: str) -> None:
        """Make the running server read the schema's RD again now (it would by itself, but
        only 10 s after its last reload)."""
        if not self.running():
            return
        found = re.search(r"(?m)^adminpasswd:\s*(\S+)", self.settings.read_text())
        if found is None:
            raise LoaderError(f"{self.settings} has no adminpasswd", "desi-loader tap publish writes it again")
        password = found.group(1)
        query = urllib.parse.urlencode({"rdId": f"{schema}/q", "__nevow_form__": "genForm", "submit": "Go"})
        req = urllib.request.Request(f"{self.url}/__system__/services/cacheclear?{query}")
        token = base64.b64encode(f"gavoadmin:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()


#: the instance's settings: loopback by default, its own root, profiles only from etc/, no
#: privilege drop (the server runs as whoever ran ``tap publish``)
GAVO_RC = """# written by desi-loader tap publish
[general]
rootDir: {root}
logLevel: warning

[db]
profilePath: {root}/etc

[web]
bindAddress: {host}
serverPort: {port}
serverURL: http://{host}:{port}
user:
adminpasswd: {admin}
sitename: desi-loader TAP service

[async]
defaultExecTimeSync: {timeout}

[ivoa]
authority: desi-loader.local
"""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _kv_dsn(dsn: str) -> str:
    """A libpq URI or key=value DSN as DaCHS's key=value form."""
    params = psycopg2.extensions.parse_dsn(dsn)
    return " ".join(f"{k}={v}" for k, v in params.items() if k in ("host", "port", "dbname", "user", "password"))


def _dachs_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("** WARNING")]
    for i, line in enumerate(lines):
        if line.startswith("*** Error"):
            return " ".join(lines[i:i + 4]).replace("*** Error: ", "")[:500]
    return (lines[-1] if lines else "no output")[:500]


def check_pgsphere(conn: psycopg2.extensions.connection) -> None:
    """DaCHS needs pgsphere in the database it serves."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_sphere'")
        if cur.fetchone() is None:
            cur.execute("SELECT version()")
            version = cur.fetchone()[0].split(" on ")[0]
            raise DatabaseError(f"the server ({version}) has no pgsphere, which DaCHS needs to serve TAP",
                                "install it on the database host (Debian: apt-get install "
                                "postgresql-15-pgsphere); the embedded server has none: load into "
                                "Debian's PostgreSQL with --dsn")
