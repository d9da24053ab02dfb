"""Every unit of both data models means the same on every way out: VOTable and ECSV exports
read back in astropy as the unit the FITS file meant (little h not the hour, Hz kept in the
file), the VOTables pass astropy's validator, and the VOTable and the TAP service write the
same VOUnit (desi_loader.units).  Pure: no database (the Table is what query() returns)."""
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import astropy.cosmology.units as cu
import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from desi_loader import units
from desi_loader.queries import export
from desi_loader.queries.tables import ResultColumn, to_table

DATA = Path(__file__).resolve().parents[2] / "desi_loader" / "data"


def _unit_strings() -> list:
    found = set()
    fsf = json.loads((DATA / "fastspecfit.json").read_text())
    for cols in fsf["hdus"].values():
        found.update(c[3] for c in cols if c[3])
    vast = json.loads((DATA / "desivast.json").read_text())
    for alg in vast["algorithms"].values():
        for cols in alg["hdus"].values():
            found.update(c[3] for c in cols if c[3])
    return sorted(found)


UNITS = _unit_strings()


def test_the_data_models_units_are_all_here():
    assert len(UNITS) >= 30
    assert {"Mpc h-1", "(Mpc/h)^2", "1e-28 erg / (Hz s)", "nmgy", "percent", "Msun / yr"} <= set(UNITS)


def _meant(text: str):
    """What the authors meant, built by hand for the strings astropy's parsers misread."""
    by_hand = {"Mpc h-1": u.Mpc / cu.littleh, "(Mpc/h)^2": (u.Mpc / cu.littleh) ** 2,
               "1e-28 erg / (Hz s)": u.CompositeUnit(1e-28, [u.erg, u.Hz, u.s], [1, -1, -1])}
    if text in by_hand:
        return by_hand[text]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return u.Unit(text.replace("Msun", "solMass").replace("Lsun", "solLum"))


#: astropy.io.votable.validate() leaves the units of the file it read in astropy's registry
#: for the rest of the process (a validated 'nmgy' makes every later parse of "'nmgy'" fail:
#: "the namespace already uses the name"), so what a reader of the file sees is asked of a
#: fresh interpreter, as a user's session or TOPCAT reads it
_READ_BACK = """
import io, json, sys, warnings
warnings.simplefilter("ignore")
import astropy.units as u
from astropy.io import votable
from astropy.table import Table
path, strings = sys.argv[1], json.loads(sys.argv[2])
report = io.StringIO()
valid = bool(votable.validate(path, output=report)) if path else True
back = Table.read(path) if path else None
out = {"valid": valid, "report": report.getvalue(), "parsed": {}, "units": {}}
for s in strings:
    try:
        out["parsed"][s] = u.Unit(s, format="vounit").to_string()
    except ValueError as exc:
        out["parsed"][s] = "ERROR " + str(exc)
if back is not None:
    for name in back.colnames:
        unit = back[name].unit
        out["units"][name] = [str(unit), bool(unit is not None and unit.is_equivalent(u.Mpc / u.hour)),
                              bool(unit is not None and unit.is_equivalent(u.Mpc ** 2 / u.hour ** 2))]
print(json.dumps(out))
"""


def _read_back(path: str, strings: list) -> dict:
    proc = subprocess.run([sys.executable, "-c", _READ_BACK, path, json.dumps(strings)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def fresh_vounits() -> dict:
    """Each data-model unit's VOUnit as a fresh astropy parses it."""
    return _read_back("", [units.translate(t).vounit for t in UNITS])["parsed"]


@pytest.mark.parametrize("text", UNITS)
def test_each_unit_translates_to_a_vounit_and_an_astropy_unit_of_the_same_meaning(text, fresh_vounits):
    vo = units.translate(text).vounit
    assert vo, text
    assert not fresh_vounits[vo].startswith("ERROR"), fresh_vounits[vo]     # a VOUnit astropy's parser reads
    assert units.astropy_unit(text) == _meant(text)
    if "Hz" in text:
        assert "Hz" in vo and "Hz" in str(units.astropy_unit(text))   # composed units stay composed
    if " h-1" in text or "/h)" in text:
        assert "'h'" in vo and "littleh" in str(units.astropy_unit(text))


def _table_of_every_unit() -> Table:
    cols = [ResultColumn(f"c{i}", "float4", False, unit=text) for i, text in enumerate(UNITS)]
    rows = [tuple(float(j + i) for i in range(len(UNITS))) for j in range(3)]
    return to_table(cols, rows)


def test_votable_export_of_every_unit_reads_back_as_meant_and_validates(tmp_path):
    path = tmp_path / "units.vot"
    export.write([_table_of_every_unit()], str(path))
    back = _read_back(str(path), [])
    assert back["valid"], back["report"]
    written = dict(re.findall(r'<FIELD [^>]*?name="(c\d+)"[^>]*?unit="([^"]*)"', path.read_text()))
    for i, text in enumerate(UNITS):
        vo = units.translate(text).vounit
        assert written[f"c{i}"].replace("&#x27;", "'").replace("&apos;", "'") == vo    # as TAP serves it
        got, per_hour, per_hour2 = back["units"][f"c{i}"]
        quoted = re.findall(r"'([^']+)'", vo)        # what VOUnit cannot name: a unit of that name
        if quoted:
            assert all(q in got for q in quoted) and not per_hour and not per_hour2, (text, got)
            continue
        assert u.Unit(got) == _meant(text), (text, got)


def test_ecsv_export_of_every_unit_reads_back_as_meant(tmp_path):
    path = tmp_path / "units.ecsv"
    export.write([_table_of_every_unit()], str(path))
    assert "Hz" in [ln for ln in path.read_text().splitlines() if "1e-28" in ln][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Table.read(path)
        with u.add_enabled_units(cu):
            meant = Table.read(path)
    for i, text in enumerate(UNITS):
        assert meant[f"c{i}"].unit == _meant(text), (text, meant[f"c{i}"].unit)
        assert not str(plain[f"c{i}"].unit).endswith(" / h"), text      # little h is never the hour
    assert np.all(meant["c0"] == [0, 1, 2])


def test_a_cone_exports_its_distance_in_degrees(tmp_path):
    t = to_table([ResultColumn("dist", "float8", False, unit="deg")], [(0.5,), (1.0,)])
    path = tmp_path / "cone.vot"
    export.write([t], str(path))
    assert Table.read(path)["dist"].unit == u.deg
