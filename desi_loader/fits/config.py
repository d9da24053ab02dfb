"""Presets and settings: conf/*.ini -> frozen dataclasses."""
from __future__ import annotations

import configparser
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UsageError

PRESET_FILE = "desi_dr1.ini"
#: operations a preset may use to derive a column (see fields._derive)
DERIVE_OPS = ("inv_sqrt",)


@dataclass(frozen=True)
class Distribution:
    """How a table is placed on a Citus cluster: ``hash`` on a column (co-located with the
    catalog's other tables hashed on the same column), ``reference`` (a copy on every
    node) or ``local`` (a plain table on the coordinator)."""

    kind: str                       # hash | reference | local
    column: Optional[str] = None    # the distribution column of hash

    def __str__(self) -> str:
        return f"hash({self.column})" if self.kind == "hash" else self.kind


def check_distribution(dist: Distribution, table: str, columns: Sequence[str]) -> None:
    if dist.kind == "hash" and dist.column not in columns:
        raise UsageError(f"table {table}: distribution column {dist.column!r} is not one of its columns",
                         "fix distribute / distribute.HDU in the preset (or --distribute)")


def parse_distribution(value: str) -> Distribution:
    """'hash(targetid)' | 'reference' | 'local' -> Distribution."""
    v = value.strip().lower()
    m = re.match(r"^hash\s*\(\s*([a-z_][a-z0-9_]*)\s*\)$", v)
    if m:
        return Distribution("hash", m.group(1))
    if v in ("reference", "local"):
        return Distribution(v)
    raise UsageError(f"distribution {value!r}: expected hash(COLUMN), reference or local",
                     "write e.g. distribute = hash(targetid), distribute.VOIDS = reference")


#: Suffixes of compressed files the loader reads (gzip: read.py decompresses them).
COMPRESSED_SUFFIXES = (".gz",)


def released_name(filename: str) -> str:
    """The file name as released, without a compression suffix: presets recognise
    ``fastspec-iron-main-bright-nside1-hp00.fits.gz`` as the .fits file it holds."""
    for suffix in COMPRESSED_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


@dataclass(frozen=True)
class Catalog:
    """How the files of one catalog map to tables."""

    name: str
    description: str = ""
    match: tuple[str, ...] = ()
    hdus: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    aligned: bool = False
    tables: dict = field(default_factory=dict)        # EXTNAME -> table
    keys: dict = field(default_factory=dict)          # EXTNAME -> key columns
    indexes: dict = field(default_factory=dict)       # EXTNAME -> tuple of column tuples
    descriptions: Optional[str] = None
    constants: tuple[str, ...] = ()
    filename_regex: Optional[str] = None
    nulls: dict = field(default_factory=dict)         # EXTNAME -> {column: value}
    prefix: Optional[str] = None                      # generic catalogs: table name prefix
    requires: dict = field(default_factory=dict)      # constant value (lowercase) -> required EXTNAMEs
    scope: tuple[str, ...] = ()                       # columns prepended to every foreign key
    fkeys: dict = field(default_factory=dict)         # EXTNAME -> ((column, EXTNAME, column), ...)
    views: dict = field(default_factory=dict)         # view name -> SELECT with {schema}
    columns: dict = field(default_factory=dict)       # EXTNAME -> selected column names (default all)
    derived: dict = field(default_factory=dict)       # column -> (op, EXTNAME, source column)
    one_table: Optional[str] = None                   # one table for all HDUs (row-aligned), INI one_table
    detect: bool = True                               # chosen by file-name detection
    constant_types: dict = field(default_factory=dict)  # constant -> int2/int4/int8/text
    sky: dict = field(default_factory=dict)           # EXTNAME ('*': every HDU) -> (RA column, DEC column)
    distribution: dict = field(default_factory=dict)  # EXTNAME ('*': default) -> Distribution (Citus)

    def distribution_of(self, table: str) -> "Distribution":
        """How ``table`` is spread over a Citus cluster (local on a plain server)."""
        ext = next((e for e, t in self.tables.items() if t == table), None)
        return self.distribution.get(ext or "") or self.distribution.get("*") or Distribution("local")

    def sky_columns(self, extname: Optional[str]) -> Optional[tuple[str, str]]:
        """The (RA, DEC) FITS columns of an HDU that get a sky index, or None."""
        return self.sky.get((extname or "").upper()) or self.sky.get("*")

    def required_hdus(self, constants: dict) -> tuple[str, ...]:
        """HDUs a file must have: require.<value of one of its constants>, else hdus - optional."""
        for value in constants.values():
            if str(value).lower() in self.requires:
                return self.requires[str(value).lower()]
        return tuple(h for h in self.hdus if h not in self.optional)

    def matches(self, filename: str) -> bool:
        return any(fnmatch.fnmatch(released_name(filename), pat) for pat in self.match)

    def table_for(self, extname: Optional[str], index: int) -> str:
        if self.one_table:
            return self.one_table
        if self.prefix is not None:
            suffix = extname.lower() if extname else f"hdu{index}"
            return f"{self.prefix}_{re.sub(r'[^a-z0-9_]', '_', suffix)}"
        return self.tables[(extname or "").upper()]

    def file_constants(self, filename: str) -> dict:
        if not self.filename_regex:
            return {}
        m = re.search(self.filename_regex, released_name(filename))
        if not m:
            raise UsageError(f"{filename}: name does not match the {self.name} pattern "
                             f"{self.filename_regex!r}", "rename the file as released")
        out = {}
        for k, v in m.groupdict().items():
            if k in self.constants:
                typ = self.constant_types.get(k, "text")
                out[k] = int(v) if (v is not None and typ != "text") else v
        return out

    def table_names(self) -> list:
        return [self.one_table] if self.one_table else sorted(set(self.tables.values()))


def generic(prefix: str, sky: Optional[str] = None) -> Catalog:
    """Every binary-table HDU of every file into PREFIX_<extname>, keyed by (file_id, row_num);
    ``sky`` ('RA,DEC') gives every HDU with those columns a sky index."""
    if not re.match(r"^[a-z_][a-z0-9_]*$", prefix):
        raise UsageError(f"--prefix {prefix!r} is not a plain lowercase name",
                         "use letters, digits and underscores, e.g. --prefix mycat")
    return Catalog(name="generic", description="any FITS binary tables", prefix=prefix,
                   sky={"*": parse_sky(sky)} if sky else {})


def arrow_catalog(table: str, sky: Optional[tuple] = None) -> Catalog:
    """A Parquet file's (or HATS catalog's) one table, keyed by (file_id, row_num); ``sky``
    (RA, DEC) gives it a sky index."""
    if not re.match(r"^[a-z_][a-z0-9_]*$", table):
        raise UsageError(f"table name {table!r} is not a plain lowercase name",
                         "name the table with --prefix NAME (letters, digits and underscores)")
    return Catalog(name="parquet", description="Parquet files or a HATS catalog", hdus=("DATA",),
                   tables={"DATA": table}, detect=False, sky={"DATA": sky} if sky else {})


def parse_sky(value: str) -> tuple[str, str]:
    """'RA, DEC' -> ('RA', 'DEC'): the position columns of a sky index."""
    cols = tuple(c.upper() for c in _list(value))
    if len(cols) != 2:
        raise UsageError(f"sky columns {value!r}: expected two column names, RA then DEC",
                         "write e.g. sky.METADATA = RA, DEC (or --sky RA,DEC)")
    return cols


def _list(value: str, sep: Optional[str] = None) -> tuple[str, ...]:
    parts = value.split(sep) if sep else value.replace(",", " ").split()
    return tuple(p.strip() for p in parts if p.strip())


def _catalog(name: str, sec: configparser.SectionProxy) -> Catalog:
    tables, keys, indexes, nulls, requires, fkeys, views, sky = {}, {}, {}, {}, {}, {}, {}, {}
    distribution = {"*": parse_distribution(sec["distribute"])} if sec.get("distribute") else {}
    columns, derived = {}, {}
    constants, constant_types = [], {}
    for item in _list(sec.get("constants", "")):
        const, _, typ = item.partition(":")
        constants.append(const)
        if typ:
            if typ not in ("text", "int2", "int4", "int8"):
                raise UsageError(f"constant {const}: type {typ!r} is not text, int2, int4 or int8")
            constant_types[const] = typ
    default_key = tuple(c.strip().lower() for c in sec.get("key", "").split(",") if c.strip())
    for opt, value in sec.items():
        if opt.startswith("table."):
            tables[opt[6:].upper()] = value.strip()
        elif opt.startswith("index."):
            indexes[opt[6:].upper()] = tuple(
                tuple(c.strip().lower() for c in ix.split(",") if c.strip()) for ix in value.split(";")
                if ix.strip())
        elif opt.startswith("key."):
            keys[opt[4:].upper()] = tuple(c.strip().lower() for c in value.split(",") if c.strip())
        elif opt.startswith("require."):
            requires[opt[8:].lower()] = tuple(h.upper() for h in _list(value))
        elif opt.startswith("fk."):
            fkeys[opt[3:].upper()] = tuple(_fkey(fk) for fk in value.split(";") if fk.strip())
        elif opt.startswith("view."):
            views[opt[5:].lower()] = " ".join(value.split())
        elif opt.startswith("columns."):
            columns[opt[8:].upper()] = tuple(c.upper() for c in _list(value))
        elif opt.startswith("derive."):
            m = re.match(r"^\s*(\w+)\s*\(\s*(\w+)\.(\w+)\s*\)\s*$", value)
            if not m or m.group(1) not in DERIVE_OPS:
                raise UsageError(f"bad derived column {opt[7:]} = {value.strip()!r} in the presets",
                                 f"write: op(HDU.COLUMN) with op one of {', '.join(DERIVE_OPS)}")
            derived[opt[7:].lower()] = (m.group(1), m.group(2).upper(), m.group(3).upper())
        elif opt.startswith("distribute."):
            distribution[opt[11:].upper()] = parse_distribution(value)
        elif opt.startswith("sky."):              # 'none' turns a preset's sky index off
            sky[opt[4:].upper()] = () if value.strip().lower() in ("", "none") else parse_sky(value)
        elif opt.startswith("null."):
            nulls[opt[5:].upper()] = {p.split(":")[0].strip().upper(): int(p.split(":")[1])
                                      for p in value.split(",") if p.strip()}
    for hdu in tables:
        keys.setdefault(hdu, default_key)
    one_table = sec.get("one_table") or sec.get("join") or None      # 'join': its name before 0.x
    if one_table:
        keys.setdefault("", default_key)       # the one table's key
    return Catalog(name=name, description=sec.get("description", ""), match=_list(sec.get("match", "")),
                   hdus=tuple(h.upper() for h in _list(sec.get("hdus", ""))),
                   optional=tuple(h.upper() for h in _list(sec.get("optional", ""))),
                   aligned=sec.getboolean("aligned", False), tables=tables, keys=keys, indexes=indexes,
                   descriptions=sec.get("descriptions") or None, constants=tuple(constants),
                   constant_types=constant_types, columns=columns, derived=derived,
                   one_table=one_table, detect=sec.getboolean("detect", True),
                   filename_regex=sec.get("filename_regex") or None, nulls=nulls, requires=requires,
                   scope=tuple(c.strip().lower() for c in sec.get("scope", "").split(",") if c.strip()),
                   fkeys=fkeys, views=views, sky=sky, distribution=distribution)


def _fkey(text: str) -> tuple[str, str, str]:
    """'void0 -> VOIDS(void)' -> ('void0', 'VOIDS', 'void')."""
    m = re.match(r"^\s*(\w+)\s*->\s*(\w+)\s*\(\s*(\w+)\s*\)\s*$", text)
    if not m:
        raise UsageError(f"bad foreign key {text.strip()!r} in the presets", "write: column -> HDU(column)")
    return m.group(1).lower(), m.group(2).upper(), m.group(3).lower()


@dataclass(frozen=True)
class Settings:
    """The merged configuration: presets, default schema, database DSN."""

    catalogs: dict
    schema: str
    dsn: Optional[str]
    source: str


def preset_paths(extra: Optional[str]) -> list[Path]:
    """Candidate preset files: --config, $DESI_LOADER_CONF, the repository's conf/, the installed copy."""
    paths = []
    if extra:
        p = Path(extra)
        if not p.is_file():
            raise UsageError(f"config file {extra} does not exist", "give the path of an INI file")
        paths.append(p)
    if os.environ.get("DESI_LOADER_CONF"):
        paths.append(Path(os.environ["DESI_LOADER_CONF"]))
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "conf" / PRESET_FILE,
                 Path(sys.prefix) / "share" / "desi-loader" / "conf" / PRESET_FILE):
        if cand.is_file():
            paths.append(cand)
            break
    return paths


def load_settings(config: Optional[str] = None) -> Settings:
    """Read the presets (and any user config given with --config, which overrides them)."""
    parser = configparser.ConfigParser(interpolation=None)
    found = preset_paths(config)
    # read the shipped presets first, then user files, so user sections override
    parser.read([str(p) for p in reversed(found)])
    catalogs = {s.split(":", 1)[1]: _catalog(s.split(":", 1)[1], parser[s])
                for s in parser.sections() if s.startswith("catalog:")}
    dsn = parser.get("database", "dsn", fallback=None) if parser.has_section("database") else None
    schema = parser.defaults().get("schema", "desi_dr1")
    return Settings(catalogs, schema, dsn or None, ", ".join(str(p) for p in found))
