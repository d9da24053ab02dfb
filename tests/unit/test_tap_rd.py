"""The pure parts of the TAP service: units as VOUnits, UCDs, ADQL names, DaCHS types, and
the resource descriptor written from table descriptions (no database, no DaCHS)."""
import xml.etree.ElementTree as ET

import astropy.units as u
import numpy as np
import pytest

from desi_loader import units
from desi_loader.tap import rd, vocab
from desi_loader.tap.describe import ColumnMeta, TableMeta


@pytest.mark.parametrize("fits,vounit", [
    ("deg", "deg"), ("km / s", "km.s**-1"), ("mag", "mag"), ("", ""), (None, ""),
    ("Mpc h-1", "Mpc.'h'**-1"), ("(Mpc/h)^2", "Mpc**2.'h'**-2"), ("nmgy", "'nmgy'"),
    ("1 / nmgy2", "'nmgy'**-2"), ("percent", "'percent'"), ("Msun", "solMass"),
])
def test_vounit(fits, vounit):
    assert units.translate(fits).vounit == vounit


def test_vounit_keeps_the_unit_and_says_what_changed():
    flux = units.translate("1e-17 erg / (Angstrom cm2 s)")
    assert u.Unit(flux.vounit, format="vounit") == u.Unit("1e-17 erg / (Angstrom cm2 s)")
    assert units.translate("Mpc h-1").note and "little h" in units.translate("Mpc h-1").note
    bad = units.translate("furlongs per fortnight")
    assert bad.vounit == "" and "left out" in bad.note


def test_adql_names_and_ucds():
    assert vocab.adql_name("zone") == "quoted/zone"
    assert vocab.adql_name("size") == "quoted/size"
    assert vocab.adql_name("ra") == "ra" and vocab.adql_name("dec") == "dec"
    assert vocab.adql_name("Weird") == "quoted/Weird"
    assert vocab.ucd("fastspecfit_metadata", "z") == "src.redshift"
    assert vocab.ucd("desivast_voids", "z") == "pos.cartesian.z"
    assert vocab.ucd("desivast_voids", "x2") == "pos.cartesian.x"
    assert vocab.ucd("fastspecfit_metadata", "flux_ivar_w1") == "stat.weight;phot.flux"
    assert vocab.ucd("fastspecfit_fastspec", "halpha_flux") == "phot.flux"
    assert vocab.ucd("fastspecfit_fastspec", "halpha_ew") == "spect.line.eqWidth"
    assert vocab.ucd("fastspecfit_specphot", "absmag10_decam_g") == "phys.magAbs"
    assert vocab.ucd("anything", "mystery") == ""


@pytest.mark.parametrize("pg,shape,dachs", [
    ("real", (), "real"), ("bigint", (), "bigint"), ("real[]", (5,), "real[5]"), ("real[]", (2, 3), None),
    ("numeric(20,0)", (), "double precision"), ("boolean[]", (8,), "boolean[8]"), ("jsonb", (), None),
    ("text[]", (3,), None), ("timestamp with time zone", (), None), ("double precision[]", (), "double precision[]"),
    ("text", (), "unicode"),
])
def test_dachs_types(pg, shape, dachs):
    assert vocab.dachs_type(pg, shape) == dachs


def _col(name, t="double precision", ucd="", unit="", null=None):
    return ColumnMeta(name, t, t, unit, ucd, f"the {name}", null_literal=null)


def test_resource_descriptor():
    voids = TableMeta("desivast_voids", "table", "voids", (
        _col("algorithm", "text", "meta.code"), _col("void", "bigint", "meta.id;meta.main"),
        _col("ra", ucd="pos.eq.ra;meta.main", unit="deg"), _col("dec", ucd="pos.eq.dec;meta.main", unit="deg")),
        primary=("algorithm", "void"), sky=("ra", "dec"), q3c_index="desivast_voids_q3c_idx", rows=10)
    zones = TableMeta("desivast_zonevoid", "table", "zones", (
        _col("algorithm", "text"), _col("zone", "bigint"), _col("void0", "bigint", null=-1)),
        primary=("algorithm", "zone"), foreign_keys=((("algorithm", "void0"), "desivast_voids", ("algorithm", "void")),
                                                     (("algorithm", "zone"), "desivast_zonevoid", ("algorithm", "zone"))))
    view = TableMeta("desivast_void_galaxies", "view", "members", (_col("void", "bigint"),))
    p = rd.Privileges(("trustedquery", "untrustedquery"), ("admin", "dl_role_loader"))
    text = rd.resource_descriptor("desi_dr1", [view, zones, voids], {"": p, "desivast_voids": p,
                                                                   "desivast_zonevoid": p,
                                                                   "desivast_void_galaxies": p}, "T", "2026-01-01")
    root = ET.fromstring(text)
    assert root.get("schema") == "desi_dr1" and root.get("allProfiles") == "admin,dl_role_loader"
    tables = root.findall("table")
    # a foreign key's table before the one pointing to it; views last
    assert [t.get("id") for t in tables] == ["desivast_voids", "desivast_zonevoid", "desivast_void_galaxies"]
    assert all(t.get("onDisk") == "True" and t.get("adql") == "True" for t in tables)
    v = tables[0]
    assert [c.get("name") for c in v.findall("column")] == ["algorithm", "void", "ra", "dec"]   # table order
    ix = v.find("index")
    assert ix.get("kind") == "q3c" and ix.find("columns").text == "ra,dec" and "q3c_ang2ipix(ra, dec)" in ix.find(
        "columns").tail
    z = tables[1]
    assert [c.get("name") for c in z.findall("column")] == ["algorithm", "quoted/zone", "void0"]
    assert z.findall("foreignKey")[1].get("source") == 'algorithm,"zone"'
    assert z.find("column[@name='void0']/values").get("nullLiteral") == "-1"
    assert z.find("column[@name='algorithm']").get("required") == "True"
    assert [m.get("table") for m in root.find("data").findall("make")] == \
        ["desivast_void_galaxies", "desivast_zonevoid", "desivast_voids"]
    services = root.findall("service")
    assert [s.get("id") for s in services] == ["cone_desivast_voids", "web"]
    assert services[0].find("scsCore").get("queriedTable") == "desivast_voids"
    assert [c.get("buildFrom") for c in services[0].find("scsCore").findall("condDesc")] == \
        [c for c in rd.FORM_COLUMNS["desivast_voids"] if c in {"algorithm"}]      # the columns the table has
    web = services[1]
    assert web.get("allowed") == "static" and web.find("property[@name='staticData']").text == rd.WEB_DIR


def test_same_description_ignores_the_date_and_row_counts_within_a_factor_of_two():
    def text(date, rows, extra=""):
        return (f'<resource><meta name="creationDate">{date}</meta><table><meta name="_nrows">{rows[0]}</meta>'
                f'</table><table><meta name="_nrows">{rows[1]}</meta>{extra}</table></resource>')
    assert rd.same_description(text("2026-01-01", (6000, 10)), text("2026-02-01", (4000, 19)))
    assert not rd.same_description(text("2026-01-01", (6000, 10)), text("2026-01-01", (2000, 10)))
    assert not rd.same_description(text("2026-01-01", (0, 10)), text("2026-01-01", (2, 10)))
    assert not rd.same_description(text("2026-01-01", (6000, 10)), text("2026-01-01", (6000, 10), "<column/>"))


def test_declared_coverage_is_a_moc_and_only_growth_reloads():
    from desi_loader.queries.coverage import moc_ascii
    assert moc_ascii(np.array([9, 1, 2, 3, 7, 10]), 6) == "6/1-3,7,9-10" and moc_ascii(np.array([], int), 6) == "6/"
    text = rd.resource_descriptor("s", [], {"": rd.Privileges(("q",), ("a",))}, "T", "2026-01-01", "6/1-3")
    assert ET.fromstring(text.split("\n", 1)[1]).find("coverage/spatial").text == "6/1-3"
    old = rd.resource_descriptor("s", [], {"": rd.Privileges(("q",), ("a",))}, "T", "2026-01-01", "6/1-3,7")
    assert rd.same_description(old, text)                    # less sky: the RD stays (still true of it)
    assert not rd.same_description(text, old)                # more sky: declared at once


def test_coverage_at_a_coarser_order_is_the_parents_of_its_cells():
    from desi_loader.queries.coverage import Coverage
    cov = Coverage("s", "t", 8, np.array([0, 3, 4, 17, 300]), np.ones(5, int), 5)
    assert cov.cells_at(8).tolist() == [0, 3, 4, 17, 300] and cov.cells_at(7).tolist() == [0, 1, 4, 75]
    assert cov.cells_at(6).tolist() == [0, 1, 18]
    with pytest.raises(ValueError):
        cov.cells_at(9)


def test_integer_arrays_have_a_null_stand_in_for_their_elements():
    from desi_loader.tap.describe import _null_literal
    assert _null_literal("integer[]", None) == -2 ** 31 and _null_literal("smallint[3]", None) == -2 ** 15
    assert _null_literal("bigint", None) == -2 ** 63 and _null_literal("real[5]", None) is None
