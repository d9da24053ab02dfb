#!/usr/bin/env python
"""Derive the compact column tables the sample generator and presets need.

Reads the project's reference data model (../shared/datamodel/*.json by default) and
writes desi_loader/data/{fastspecfit,desivast}.json: per HDU the column name, TFORM,
TDIM, TUNIT and a one-line description; per file the row counts and string widths;
the primary header cards.  Run once when the reference data model changes.
"""
import json
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "datamodel")
out = Path(__file__).resolve().parents[1] / "desi_loader" / "data"


def short(text):
    text = (text or "").split(" KNOWN BUG")[0].strip()
    return text[:200]


def cols(rows, unit_key="unit"):
    return [[c["name"], c["tform"], c.get("tdim"), c.get(unit_key), short(c.get("description"))]
            for c in rows]


fsf = json.loads((src / "fastspecfit-iron-v3.json").read_text())
cards = [[c["key"], c["value"], c["comment"]] for c in fsf["primary_header"]["cards"]
         if "/" not in c["key"] and c["key"] not in ("CHECKSUM", "DATASUM")]
fastspec = {
    "hdus": {"METADATA": cols(fsf["METADATA"]), "METADATA_sv_cmx": cols(fsf["METADATA_sv_cmx"]),
             "SPECPHOT": cols(fsf["SPECPHOT"]), "FASTSPEC": cols(fsf["FASTSPEC"])},
    "primary_cards": cards,
    "dependency_cards": fsf["primary_header"]["example_dependency_cards"],
    "files": [[f["filename"], f["survey"], f["program"], f["nside1_pixel"], f["nrows"],
               f["tform_SURVEY"], f["tform_PROGRAM"], f["tform_TILEID_LIST"]] for f in fsf["files"]],
}
(out / "fastspecfit.json").write_text(json.dumps(fastspec, separators=(",", ":")))

vast = json.loads((src / "desivast-dr1-v1.json").read_text())
algos = {}
for alg in ("VoidFinder", "REVOLVER", "VIDE", "ZOBOV"):
    a = vast[alg]
    ph = a["primary_header"]
    algos[alg] = {
        "hdus": {h: cols(a[h]) for h in a["hdu_order"][1:]},
        "hdu_order": a["hdu_order"],
        "primary_cards": [[k, ph[k].get("value") if isinstance(ph.get(k), dict) else None,
                           ph[k].get("comment") if isinstance(ph.get(k), dict) else None]
                          for k in ph["_card_order"] if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND",
                                                                   "CHECKSUM", "DATASUM")],
        "extension_cards": {h: {k: v["comment"] for k, v in e.items() if isinstance(v, dict)}
                            for h, e in a["extension_headers"].items()},
        "rows": {cap: f["rows"] for cap, f in a["files"].items()},
    }
(out / "desivast.json").write_text(json.dumps({"algorithms": algos}, separators=(",", ":")))
print("wrote", out / "fastspecfit.json", out / "desivast.json")
