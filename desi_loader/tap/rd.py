"""The DaCHS resource descriptor of a schema's published tables: pure, TableMeta in, XML out.

Every table is declared ``onDisk`` (it exists; ``dachs imp -m`` imports its metadata only,
nothing is copied) and ``adql`` (served over TAP), with every column in table order (DaCHS
checks that), its unit, UCD and description; primary and foreign keys; the q3c index, so
that ADQL ``CONTAINS(POINT, CIRCLE)`` and ``DISTANCE() < r`` become ``q3c_join`` and use
it; and one Simple Cone Search service per table with a sky index.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence

from .describe import TableMeta
from .vocab import adql_name

#: the RD's name inside its resource directory: its id is "<schema>/q"
RD_NAME = "q"

#: the static service of the schema's web pages (its landing page, the coverage pictures),
#: served from this directory of the RD's resource directory (tap/web.py writes it)
WEB_SERVICE = WEB_DIR = "web"

#: the columns a table's search form offers beside the position and radius (DaCHS builds an
#: input from each column: ranges for numbers, values for text), first match on the table
FORM_COLUMNS = {
    "fastspecfit_metadata": ("z", "spectype", "flux_r", "survey", "program"),
    "desivast_voids": ("algorithm", "cap", "radius", "redshift"),
    "desivast_maximals": ("algorithm", "cap", "radius", "edge"),
}


def web_path(schema: str) -> str:
    """The landing page's path on the DaCHS server."""
    return f"/{schema}/{RD_NAME}/{WEB_SERVICE}/static/"


@dataclass(frozen=True)
class Privileges:
    """DaCHS profile names: who may read (DaCHS's query roles, roles that could read before),
    who keeps all rights (DaCHS's admin, the tables' owner, roles that had them).  DaCHS
    makes the grants on the schema and the tables exactly these."""

    read: tuple
    all: tuple


def service_id(table: str) -> str:
    return f"cone_{table}"


_CREATED = re.compile(r'<meta name="creationDate">[^<]*</meta>')
_SPATIAL = re.compile(r"<spatial>([^<]*)</spatial>")
_NROWS = re.compile(r'<meta name="_nrows">(\d+)</meta>')

#: a table's row count in the RD is an estimate (TOPCAT shows it): a load that changes it by
#: less than this factor leaves the RD as it is (tap/service.sync: no reload under queries)
NROWS_SLACK = 2.0


def same_description(old: str, new: str) -> bool:
    """True when two RD texts differ at most in their creation date, in tables' row counts by
    less than NROWS_SLACK, and in a declared coverage that did not grow (a MOC a little larger
    than the sky is still true of it; a reload under queries is what DaCHS 2.7 cannot take)."""
    old, new = _CREATED.sub("", old), _CREATED.sub("", new)
    was, now = _SPATIAL.search(old), _SPATIAL.search(new)
    if was and now and _cells(now.group(1)) <= _cells(was.group(1)):
        old, new = _SPATIAL.sub("", old), _SPATIAL.sub("", new)
    a, b = [int(n) for n in _NROWS.findall(old)], [int(n) for n in _NROWS.findall(new)]
    if len(a) == len(b) and all(max(x, y) < NROWS_SLACK * max(1, min(x, y)) for x, y in zip(a, b)):
        old, new = _NROWS.sub("", old), _NROWS.sub("", new)
    return old == new


def _cells(moc: str) -> set:
    """(order, cell) of a MOC in ASCII ("6/1-3,7 7/40")."""
    out: set = set()
    for order, cells in re.findall(r"(\d+)/([\d,\-\s]*)", moc):
        for item in re.split(r"[,\s]+", cells.strip()):
            if item:
                a, _, b = item.partition("-")
                out.update((int(order), c) for c in range(int(a), int(b or a) + 1))
    return out


def resource_descriptor(schema: str, tables: Sequence[TableMeta], privileges: dict, title: str,
                        created: str, spatial: str = "") -> str:
    """The RD text. ``privileges``: relation name (and ``""`` for the schema) -> Privileges;
    ``spatial``: the sky the tables cover, a MOC in ASCII, declared as the resource's coverage."""
    schema_priv = privileges[""]
    root = ET.Element("resource", schema=schema, resdir=schema, readProfiles=",".join(schema_priv.read),
                      allProfiles=",".join(schema_priv.all))
    _meta(root, "title", title)
    _meta(root, "description", f"The tables desi-loader published in schema {schema}, served as they are "
          "in the database (nothing copied): FITS units as VOUnits, descriptions from the files' data model.")
    _meta(root, "creationDate", created)
    _meta(root, "subject", "Galaxies")
    _meta(root, "subject", "Redshift surveys")
    _meta(root, "creator.name", "DESI Collaboration")
    _meta(root, "contentLevel", "Research")
    _meta(root, "type", "Catalog")
    if spatial:
        ET.SubElement(ET.SubElement(root, "coverage"), "spatial").text = spatial
    for t in _referenced_first(tables):
        root.append(_table(t, privileges[t.name]))
    data = ET.SubElement(root, "data", id="import")      # what dachs imp -m updates
    for t in tables:
        ET.SubElement(data, "make", table=t.name)
    for t in tables:
        if t.sky and t.q3c_index and t.kind == "table" and _has_main_id(t):
            root.append(_cone_service(t))
    root.append(_web_service(title))
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _referenced_first(tables: Sequence[TableMeta]) -> list:
    """Tables in an order where a foreign key's table comes before the table pointing to it
    (DaCHS resolves ``inTable`` while it parses); views last."""
    done, out = set(), []
    pending = {t.name: t for t in tables}

    def visit(t: TableMeta, path: frozenset) -> None:
        if t.name in done or t.name in path:
            return
        for _src, dest, _dcols in t.foreign_keys:
            if dest in pending:
                visit(pending[dest], path | {t.name})
        done.add(t.name)
        out.append(t)

    for t in sorted(tables, key=lambda t: (t.kind == "view", t.name)):
        visit(t, frozenset())
    return out


def _meta(parent: ET.Element, name: str, text: str) -> None:
    ET.SubElement(parent, "meta", name=name).text = text


def _has_main_id(t: TableMeta) -> bool:
    return any(c.ucd == "meta.id;meta.main" for c in t.columns)


def _table(t: TableMeta, priv: Privileges) -> ET.Element:
    attrs = {"id": t.name, "onDisk": "True", "adql": "True", "readProfiles": ",".join(priv.read),
             "allProfiles": ",".join(priv.all)}
    if t.primary:
        attrs["primary"] = ",".join(t.primary)
    el = ET.Element("table", attrs)
    _meta(el, "description", t.description)
    if t.rows:
        _meta(el, "_nrows", str(t.rows))
    if t.sky and t.q3c_index:
        ix = ET.SubElement(el, "index", name=t.q3c_index, kind="q3c")
        ET.SubElement(ix, "columns").text = f"{t.sky[0]},{t.sky[1]}"
        ix[-1].tail = f"q3c_ang2ipix({t.sky[0]}, {t.sky[1]})"
    for src, dest, dcols in t.foreign_keys:
        ET.SubElement(el, "foreignKey", inTable=dest, source=_key_list(src), dest=_key_list(dcols))
    for c in t.columns:
        col = ET.SubElement(el, "column", name=adql_name(c.name), type=c.dachs_type)
        if c.unit:
            col.set("unit", c.unit)
        if c.ucd:
            col.set("ucd", c.ucd)
        if c.name in t.primary:
            col.set("required", "True")
        elif c.null_literal is not None:
            ET.SubElement(col, "values", nullLiteral=str(c.null_literal))
        description = c.description + (f" ({c.note})" if c.note else "")
        if description:
            ET.SubElement(col, "description").text = description
    return el


def _key_list(columns: Sequence[str]) -> str:
    """Key columns as TAP_SCHEMA names them: ADQL-reserved names delimited."""
    return ",".join(f'"{c}"' if adql_name(c) != c else c for c in columns)


def _cone_service(t: TableMeta) -> ET.Element:
    if t.sky is None:
        raise ValueError(f"{t.name} has no sky index to serve a cone search on")
    svc = ET.Element("service", id=service_id(t.name), allowed="scs.xml,form")
    _meta(svc, "title", f"Cone search on {t.name}")
    _meta(svc, "shortName", t.name[:16])
    _meta(svc, "description", f"Simple Cone Search on {t.name} (q3c index on {t.sky[0]}, {t.sky[1]}).")
    _meta(svc, "testQuery.ra", "150.0")
    _meta(svc, "testQuery.dec", "30.0")
    _meta(svc, "testQuery.sr", "1.0")
    core = ET.SubElement(svc, "scsCore", queriedTable=t.name)
    ET.SubElement(core, "FEED", source="//scs#coreDescs")
    names = {c.name for c in t.columns}
    for column in FORM_COLUMNS.get(t.name, ()):
        if column in names:
            ET.SubElement(core, "condDesc", buildFrom=adql_name(column).replace("quoted/", ""))
    return svc


def cone_form_path(schema: str, table: str) -> str:
    """The search form of a table with a cone search, on the DaCHS server."""
    return f"/{schema}/{RD_NAME}/{service_id(table)}/form"


def _web_service(title: str) -> ET.Element:
    """The schema's landing page and its pictures, files DaCHS serves as they are."""
    svc = ET.Element("service", id=WEB_SERVICE, allowed="static")
    _meta(svc, "title", f"{title}: tables, coverage and search forms")
    _meta(svc, "description", "What the schema serves: each table with its coverage, search form, cone search "
          "and TAP endpoints.")
    ET.SubElement(svc, "property", name="staticData").text = WEB_DIR
    ET.SubElement(svc, "property", name="indexFile").text = f"{WEB_DIR}/index.html"
    ET.SubElement(svc, "nullCore")
    return svc
