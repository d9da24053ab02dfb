"""The contract as a property: over random FITS tables, file sets with damaged files mixed in
and random sequences of commands in random modes, every run does what a model of the
published tables says.

Each example fixes a random table layout (every supported TFORM, TNULL, TZERO, TSCAL, TDIM,
bits, complex, variable-length arrays, awkward and long names), then runs 1-4 steps; each
step changes the folder (adds a good file, a damaged file, repairs, rewrites or removes one)
and runs ``desi-loader load FOLDER`` with random flags (--replace-all, --allow-partial,
--format text, --dry-run).  Checked against the model after every step:

- the exit code (0, 1 or 4 as the README's table says);
- every named file accounted for: in the summary JSON as loaded / unchanged / failed, and
  every failed file named in the output;
- the published table holds exactly the files the model says, each value equal to what an
  independent reader (astropy, fitsio for strings) reads from that version of the file.

DESI_LOADER_PROPS_EXAMPLES sets the number of examples (default 25, about 20 s here);
DESI_LOADER_PROPS_RANDOM=1 draws fresh examples (the default profile is derandomised, so CI
runs the same ones every time); DESI_LOADER_PROPS_SHRINK=1 shrinks a failure.
"""
import gzip
import json
import os
import shutil
import tempfile
import uuid

import numpy as np
import psycopg2
from astropy.io import fits
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from desi_loader.cli import main
from helpers import fetch
import pytest

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

EXAMPLES = int(os.environ.get("DESI_LOADER_PROPS_EXAMPLES", "25"))
STRINGS = [" lead", "back\\slash", "tab\there", "\\N", "q'uo\"te", "", "x", "trail  ", "new\nline"]

# --------------------------------------------------------------------------- layouts

#: column kinds: how each is written (astropy Column arguments from an rng and a row count)
KINDS = ("E", "D", "K", "J_null", "I", "B", "U2", "U4", "U8", "L", "A", "ARR", "X", "C", "M",
         "PE", "PJ", "PA", "SCALED")


def _floats(rng, n, dtype):
    with np.errstate(invalid="ignore", over="ignore"):
        v = (rng.standard_normal(n) * 1e3).astype(dtype)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).tiny / 2, np.finfo(dtype).max], dtype)
    pick = rng.random(n) < 0.3
    v[pick] = special[rng.integers(0, len(special), pick.sum())]
    return v


def _vla(rng, n, emax, make):
    out = np.empty(n, object)
    for i in range(n):
        out[i] = make(int(rng.integers(0, emax + 1)))
    return out


def column(kind, name, rng, n):
    """An astropy Column of ``kind`` with ``n`` awkward values."""
    if kind == "E":
        return fits.Column(name=name, format="E", array=_floats(rng, n, np.float32))
    if kind == "D":
        return fits.Column(name=name, format="D", array=_floats(rng, n, np.float64))
    if kind == "K":
        v = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64)
        v[: min(n, 2)] = [-2 ** 63, 2 ** 63 - 1][: min(n, 2)]
        return fits.Column(name=name, format="K", array=v)
    if kind == "J_null":
        v = rng.integers(-1000, 1000, n).astype(np.int32)
        v[rng.random(n) < 0.3] = -99
        return fits.Column(name=name, format="J", null=-99, array=v)
    if kind == "I":
        return fits.Column(name=name, format="I", array=rng.integers(-2 ** 15, 2 ** 15, n).astype(np.int16))
    if kind == "B":
        return fits.Column(name=name, format="B", array=rng.integers(0, 256, n).astype(np.uint8))
    if kind in ("U2", "U4", "U8"):
        dt = {"U2": np.uint16, "U4": np.uint32, "U8": np.uint64}[kind]
        v = rng.integers(0, np.iinfo(dt).max, n, dtype=np.uint64, endpoint=True).astype(dt)
        return fits.Column(name=name, format={"U2": "I", "U4": "J", "U8": "K"}[kind],
                           bzero={"U2": 2 ** 15, "U4": 2 ** 31, "U8": 2 ** 63}[kind], array=v)
    if kind == "L":
        return fits.Column(name=name, format="L", array=rng.random(n) < 0.5)
    if kind == "A":
        return fits.Column(name=name, format="10A",
                           array=np.array([STRINGS[i] for i in rng.integers(0, len(STRINGS), n)], "S10"))
    if kind == "ARR":
        return fits.Column(name=name, format="6J", dim="(3,2)",
                           array=rng.integers(-50, 50, (n, 2, 3)).astype(np.int32))
    if kind == "X":
        return fits.Column(name=name, format="5X", array=rng.random((n, 5)) < 0.5)
    if kind == "C":
        z = np.empty(n, np.complex64)
        z.real, z.imag = _floats(rng, n, np.float32), _floats(rng, n, np.float32)
        return fits.Column(name=name, format="C", array=z)
    if kind == "M":
        return fits.Column(name=name, format="2M", array=rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2)))
    if kind == "PE":
        return fits.Column(name=name, format="PE(4)", array=_vla(rng, n, 4, lambda k: _floats(rng, k, np.float32)))
    if kind == "PJ":
        return fits.Column(name=name, format="QJ(3)",
                           array=_vla(rng, n, 3, lambda k: rng.integers(-9, 9, k).astype(np.int32)))
    if kind == "PA":
        return fits.Column(name=name, format="PA(12)",
                           array=np.array([STRINGS[i] for i in rng.integers(0, len(STRINGS), n)], object))
    if kind == "SCALED":                 # raw values; TSCAL/TZERO are added by write_table
        return fits.Column(name=name, format="I", array=rng.integers(-2 ** 15, 2 ** 15, n).astype(np.int16))
    raise ValueError(kind)


def write_table(path, layout, n, seed, gz=False):
    """One FITS file of the layout with ``n`` rows (CHECKSUM/DATASUM), gzip'd when asked."""
    import fitsio
    rng = np.random.default_rng(seed)
    hdu = fits.BinTableHDU.from_columns([column(k, name, rng, n) for name, k in layout], name="T")
    tmp = str(path) + ".tmp"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True, checksum=True)
    scaled = [i for i, (_, k) in enumerate(layout, start=1) if k == "SCALED"]
    if scaled:            # astropy cannot write raw integers with TSCAL/TZERO; CFITSIO can
        with fitsio.FITS(tmp, "rw") as f:
            for i in scaled:
                f[1].write_key(f"TSCAL{i}", 0.5)
                f[1].write_key(f"TZERO{i}", 3.0)
            f[1].write_checksum()
    if gz:
        with open(tmp, "rb") as src, open(path, "wb") as out:
            out.write(gzip.compress(src.read(), mtime=seed))
        os.remove(tmp)
    else:
        os.replace(tmp, path)


def damage(path, kind, good):
    """Write a damaged file of ``kind`` at ``path`` from a good (plain) file."""
    good_bytes = open(good, "rb").read()
    if kind == "truncated":              # cut inside the rows (a file short of its padding only
        with fits.open(good) as h:       # holds every row, and loads)
            at = h[1].fileinfo()["datLoc"] + h[1].header["NAXIS1"] * h[1].header["NAXIS2"] // 2
        data = good_bytes[:at]
    elif kind == "notfits":
        data = b"<html>404 Not Found</html>\n" * 40
    elif kind == "empty":
        data = b""
    elif kind == "baddatasum":
        with fits.open(good) as h:
            at = h[1].fileinfo()["datLoc"]
        data = bytearray(good_bytes)
        data[at] ^= 0x55                                   # the first byte of the rows
        data = bytes(data)
    elif kind == "truncgz":
        data = gzip.compress(good_bytes, mtime=1)[:-200]
    else:
        raise ValueError(kind)
    open(path, "wb").write(data)


# --------------------------------------------------------------------------- expected values

def _f(v, dtype):
    """A float as a comparable token: its bit pattern, NULL for NaN."""
    if v is None:
        return None
    v = dtype(v)
    return None if np.isnan(v) else int(np.array(v).view(np.uint32 if dtype is np.float32 else np.uint64))


def expected(path, layout):
    """Per row, the values an independent reader gets, in the form the database returns them."""
    import fitsio
    data = fits.getdata(path, 1)
    n = len(data) if data is not None else 0
    out = [[] for _ in range(n)]
    for name, kind in layout:
        if n == 0:
            break
        if kind in ("A", "PA"):
            # astropy's chararray drops whitespace elements; CFITSIO gives the bytes
            col = fitsio.read(str(path), 1, columns=[name])[name]
            vals = [s.rstrip(" ") if isinstance(s, str) else s.decode().rstrip(" ") for s in col]
            vals = [v.split("\x00")[0] for v in vals]
        else:
            col = data[name]
            vals = [_value(kind, col[i]) for i in range(n)]
        for row, v in zip(out, vals):
            row.append(v)
    return out


def _value(kind, v):
    if kind == "E":
        return _f(v, np.float32)
    if kind in ("D", "SCALED"):          # astropy applies TSCAL/TZERO: raw * 0.5 + 3.0
        return _f(v, np.float64)
    if kind == "J_null":
        return None if int(v) == -99 else int(v)
    if kind in ("K", "I", "B", "U2", "U4", "U8"):
        return int(v)
    if kind == "L":
        return bool(v)
    if kind == "ARR":
        return np.asarray(v).tolist()
    if kind == "X":
        return [bool(b) for b in v]
    if kind in ("C", "M"):
        dt = np.float32 if kind == "C" else np.float64
        z = np.atleast_1d(v)
        pairs = [[_f(c.real, dt), _f(c.imag, dt)] for c in z]
        return pairs[0] if kind == "C" else pairs
    if kind == "PE":
        return [_f(x, np.float32) for x in np.asarray(v)]
    if kind == "PJ":
        return [int(x) for x in np.asarray(v)]
    raise ValueError(kind)


def _db(kind, v):
    """A database value in the comparable form of _value."""
    if v is None:
        return None
    if kind == "E":
        return _f(v, np.float32)
    if kind in ("D", "SCALED"):
        return _f(v, np.float64)
    if kind in ("K", "J_null", "I", "B", "U2", "U4", "U8"):
        return int(v)
    if kind == "C":
        return [_f(x, np.float32) for x in v]
    if kind == "M":
        return [[_f(x, np.float64) for x in pair] for pair in v]
    if kind == "PE":
        return [_f(x, np.float32) for x in v]
    return v


# --------------------------------------------------------------------------- the model

NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,14}", fullmatch=True)
LONG = st.from_regex(r"[A-Z][A-Z0-9_]{63,67}", fullmatch=True)


@st.composite
def layouts(draw):
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=7))
    names, seen = [], {"file_id", "row_num"}
    for k in kinds:
        name = draw(st.one_of(NAME, LONG) if draw(st.integers(0, 9)) == 0 else NAME)
        key = name.lower()[:63]
        if key in seen:
            continue
        seen.add(key)
        names.append((name, k))
    return names or [("A1", "E")]


STEP = st.fixed_dictionaries({
    "change": st.sampled_from(["add", "add", "damage", "damage", "repair", "rewrite", "remove", "none"]),
    "rows": st.sampled_from([0, 1, 7, 25]),
    "gz": st.booleans(),
    "damage": st.sampled_from(["truncated", "notfits", "empty", "baddatasum", "truncgz"]),
    "pick": st.integers(0, 10 ** 6),
    "replace_all": st.booleans(),
    "allow_partial": st.booleans(),
    "text": st.booleans(),
    "dry_run": st.integers(0, 5).map(lambda x: x == 0),
})


class World:
    """The folder, pristine copies of every good version, and the model of the published table."""

    def __init__(self, root, layout):
        self.root, self.layout = root, layout
        self.dir = os.path.join(root, "in")
        self.keep = os.path.join(root, "versions")
        os.makedirs(self.dir)
        os.makedirs(self.keep)
        self.files = {}          # name -> ("good", version path) | ("bad", kind)
        self.published = None    # name -> version path, once something is published
        self.counter = 0

    def _good(self, name, rows, gz, seed):
        version = os.path.join(self.keep, f"v{seed}-{name}")
        write_table(version, self.layout, rows, seed, gz)
        shutil.copy2(version, os.path.join(self.dir, name))
        self.files[name] = ("good", version)

    def change(self, step):
        self.counter += 1
        seed = self.counter * 1000 + step["pick"] % 1000
        names = sorted(self.files)
        pick = names[step["pick"] % len(names)] if names else None
        if step["change"] == "add" or pick is None or (step["change"] == "remove" and len(names) < 2):
            gz = step["gz"]
            name = f"f{self.counter:02d}.fits" + (".gz" if gz else "")
            self._good(name, step["rows"], gz, seed)
        elif step["change"] == "damage":
            kind = step["damage"]
            gz = kind == "truncgz"
            overwrite = step["pick"] % 2 == 0 and pick.endswith(".gz") == gz      # a published name, or new
            name = pick if overwrite else f"d{self.counter:02d}.fits" + (".gz" if gz else "")
            good = os.path.join(self.keep, f"tmp{seed}.fits")
            write_table(good, self.layout, max(step["rows"], 7), seed)
            damage(os.path.join(self.dir, name), kind, good)
            self.files[name] = ("bad", kind)
        elif step["change"] in ("repair", "rewrite"):
            self._good(pick, step["rows"], pick.endswith(".gz"), seed)
        elif step["change"] == "remove":
            os.remove(os.path.join(self.dir, pick))
            del self.files[pick]

    def expect(self, step):
        """(exit code, published after) of loading the folder with the step's flags."""
        good = {n: v for n, (k, v) in self.files.items() if k == "good"}
        bad = {n for n, (k, _) in self.files.items() if k == "bad"}
        if not self.files:
            return 2, self.published             # a user error: no FITS files found
        if step["dry_run"]:          # headers only: a bad DATASUM is found by loading
            seen = {n for n in bad if self.files[n][1] != "baddatasum"}
            if len(seen) == len(self.files):
                return 1, self.published
            return (4 if step["allow_partial"] else 1) if seen else 0, self.published
        if not good:
            return 1, self.published
        if bad and not step["allow_partial"]:
            return 1, self.published
        code = 4 if bad else 0
        if step["replace_all"] or not self.published:
            return code, dict(good)
        return code, {**self.published, **good}


def run(world, step, uri, schema, capsys):
    js = os.path.join(world.root, "summary.json")
    if os.path.exists(js):
        os.remove(js)
    argv = ["load", world.dir, "--catalog", "generic", "--prefix", "p", "--dsn", uri, "--schema", schema,
            "-w", "1", "--summary-json", js, "--task-rows", "10"]
    argv += ["--replace-all"] * step["replace_all"] + ["--allow-partial"] * step["allow_partial"]
    argv += ["--format", "text"] * step["text"] + ["--dry-run"] * step["dry_run"]
    code = main(argv)
    out, err = capsys.readouterr()
    summary = json.load(open(js))["loads"][0] if os.path.exists(js) else None
    return code, out + err, summary


def check_accounting(world, code, text, summary, dry_run):
    bad = {n for n, (k, v) in world.files.items() if k == "bad" and not (dry_run and v == "baddatasum")}
    for name in bad:                                     # every damaged file is named
        assert name in text, (name, text)
    if code in (0, 4):
        named = {os.path.basename(p) for p in summary["files_loaded"] + summary["files_unchanged"]}
        failed = {os.path.basename(p) for p, _ in summary["files_failed"]}
        assert named | failed == set(world.files), (named, failed, sorted(world.files))
        assert failed == bad and not (named & failed)


def check_table(world, published, uri, schema):
    conn = psycopg2.connect(uri)
    try:
        exists = fetch(conn, "SELECT to_regclass(%s)", (f'"{schema}".p_t',))[0][0]
        if published is None:
            assert exists is None
            return
        files = dict(fetch(conn, f'SELECT f.filename, f.file_id FROM "{schema}".load_files f JOIN '
                                 f'"{schema}".loader_loads l USING (load_id) WHERE f.published AND l.status = %s',
                           ("published",)))
        assert sorted(files) == sorted(published)
        cols = ", ".join(f'"{name.lower()[:63]}"' for name, _ in world.layout)
        seen = {}
        for name, version in published.items():
            assert name in files, (name, sorted(files))
            rows = fetch(conn, f'SELECT {cols} FROM "{schema}".p_t WHERE file_id = %s ORDER BY row_num',
                         (files[name],))
            got = [[_db(k, v) for (_, k), v in zip(world.layout, r)] for r in rows]
            assert got == expected(version, world.layout), name
            seen[name] = len(rows)
        total = fetch(conn, f'SELECT count(*) FROM "{schema}".p_t')[0][0]
        assert total == sum(seen.values())                 # nothing else in the table
    finally:
        conn.close()


#: shrinking re-runs whole loads (seconds each): on request only
PHASES = tuple(Phase) if os.environ.get("DESI_LOADER_PROPS_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("DESI_LOADER_PROPS_RANDOM"),
          suppress_health_check=list(HealthCheck), print_blob=True, phases=PHASES)
@given(layout=layouts(), steps=st.lists(STEP, min_size=1, max_size=5))
def test_contract_holds(layout, steps, pg_uri, capsys):
    root = tempfile.mkdtemp(prefix="props-")
    schema = "p_" + uuid.uuid4().hex[:10]
    world = World(root, layout)
    try:
        for step in steps:
            world.change(step)
            want_code, want_published = world.expect(step)
            code, text, summary = run(world, step, pg_uri, schema, capsys)
            event(f"exit {code}")
            event(f"change {step['change']}")
            assert "Traceback" not in text, text
            assert code == want_code, (step, sorted(world.files.items()), text)
            check_accounting(world, code, text, summary, step["dry_run"])
            check_table(world, want_published, pg_uri, schema)
            world.published = want_published
    finally:
        shutil.rmtree(root, ignore_errors=True)
        conn = psycopg2.connect(pg_uri)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()
