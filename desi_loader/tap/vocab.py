"""What a TAP service says about a column, derived from what the loader knows: a UCD from
the column's name, the ADQL name (reserved words delimited) and the DaCHS type of a
PostgreSQL type (the unit's VOUnit is desi_loader.units', as every export writes it).  Pure:
no database, no DaCHS.
"""
from __future__ import annotations

import re
from typing import Optional

#: ADQL 2.1 reserved words (section 2.1.2 of the standard: its own words and SQL-92's).  A
#: column of one of these names is served as a delimited identifier ("zone"), as ADQL asks.
ADQL_RESERVED = frozenset("""
ABS ACOS AREA ASIN ATAN ATAN2 BIT_AND BIT_NOT BIT_OR BIT_XOR BOX CEILING CENTROID CIRCLE CONTAINS
COORD1 COORD2 COORDSYS COS COT DEGREES DISTANCE EXP FLOOR ILIKE INTERSECTS IN_UNIT LATITUDE
LOG LOG10 LONGITUDE MOC MOD OFFSET PI POINT POLYGON POWER RADIANS REGION RAND ROUND SIN SQRT
SQUARE STDDEV TAN TOP TRUNCATE
ABSOLUTE ACTION ADD ALL ALLOCATE ALTER AND ANY ARE AS ASC ASSERTION AT AUTHORIZATION AVG BEGIN
BETWEEN BIT BIT_LENGTH BOTH BY CASCADE CASCADED CASE CAST CATALOG CHAR CHARACTER CHAR_LENGTH
CHARACTER_LENGTH CHECK CLOSE COALESCE COLLATE COLLATION COLUMN COMMIT CONNECT CONNECTION
CONSTRAINT CONSTRAINTS CONTINUE CONVERT CORRESPONDING COUNT CREATE CROSS CURRENT CURRENT_DATE
CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATE DAY DEALLOCATE DECIMAL DECLARE DEFAULT
DEFERRABLE DEFERRED DELETE DESC DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT DISTINCT DOMAIN
DOUBLE DROP ELSE END END-EXEC ESCAPE EXCEPT EXCEPTION EXEC EXECUTE EXISTS EXTERNAL EXTRACT
FALSE FETCH FIRST FLOAT FOR FOREIGN FOUND FROM FULL GET GLOBAL GO GOTO GRANT GROUP HAVING HOUR
IDENTITY IMMEDIATE IN INDICATOR INITIALLY INNER INPUT INSENSITIVE INSERT INT INTEGER INTERSECT
INTERVAL INTO IS ISOLATION JOIN KEY LANGUAGE LAST LEADING LEFT LEVEL LIKE LOCAL LOWER MATCH MAX
MIN MINUTE MODULE MONTH NAMES NATIONAL NATURAL NCHAR NEXT NO NOT NULL NULLIF NUMERIC
OCTET_LENGTH OF ON ONLY OPEN OPTION OR ORDER OUTER OUTPUT OVERLAPS PAD PARTIAL POSITION
PRECISION PREPARE PRESERVE PRIMARY PRIOR PRIVILEGES PROCEDURE PUBLIC READ REAL REFERENCES
RELATIVE RESTRICT REVOKE RIGHT ROLLBACK ROWS SCHEMA SCROLL SECOND SECTION SELECT SESSION
SESSION_USER SET SIZE SMALLINT SOME SPACE SQL SQLCODE SQLERROR SQLSTATE SUBSTRING SUM
SYSTEM_USER TABLE TEMPORARY THEN TIME TIMESTAMP TIMEZONE_HOUR TIMEZONE_MINUTE TO TRAILING
TRANSACTION TRANSLATE TRANSLATION TRIM TRUE UNION UNIQUE UNKNOWN UPDATE UPPER USAGE USER USING
VALUE VALUES VARCHAR VARYING VIEW WHEN WHENEVER WHERE WITH WORK WRITE YEAR ZONE TABLESAMPLE
""".split())


def adql_name(name: str) -> str:
    """How a column is named in the resource descriptor: DaCHS's ``quoted/`` prefix for a
    name ADQL reserves (or one that is not a regular identifier), the name itself otherwise."""
    if name.upper() in ADQL_RESERVED or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return "quoted/" + name
    return name


#: (table-name pattern, column-name pattern, UCD), first match wins; UCD1+ words only.  The
#: main position of a sky-indexed table and the primary identifier are decided by the
#: caller (they depend on the table's keys and sky index, not on names).
UCD_RULES = (
    (r"desivast_.*", r"[xyz]\d?", "pos.cartesian.{0}"),
    (r"desivast_.*", r"redshift", "src.redshift"),
    (r"desivast_.*", r"radius|r_eff", "phys.size.radius"),
    (r"desivast_.*", r"(tot|edge)_area", "phys.area"),
    (r"desivast_.*", r"target(id)?", "meta.id"),
    (r"desivast_.*", r"void\d?|zone|gal|gid|g2v2?|hole", "meta.id"),
    (r".*", r"ra", "pos.eq.ra"),
    (r".*", r"dec", "pos.eq.dec"),
    (r".*", r"z|z_rr|redshift", "src.redshift"),
    (r".*", r"zerr|z_err", "stat.error;src.redshift"),
    (r".*", r"targetid|ls_id|tileid|tileid_list", "meta.id"),
    (r".*", r"file_id", "meta.id;meta.dataset"),
    (r".*", r"row_num", "meta.record"),
    (r".*", r"healpix|hpx29", "pos.healpix"),
    (r".*", r"survey|program|algorithm|cap|spectype|subtype|photsys", "meta.code"),
    (r".*", r".*_target|coadd_fiberstatus|zwarn.*|.*_bitmask|.*maskbits", "meta.code.qual"),
    (r".*", r"ebv", "phys.absorption.gal"),
    (r".*", r"mw_transmission_.*", "phys.transmission"),
    (r".*", r"absmag.*_ivar.*", "stat.weight;phys.magAbs"),
    (r".*", r"absmag.*", "phys.magAbs"),
    (r".*", r"kcorr.*", "phot.mag;arith.diff"),
    (r".*", r".*flux.*_ivar(_.*)?|flux_ivar_.*", "stat.weight;phot.flux"),
    (r".*", r".*_ew_ivar", "stat.weight;spect.line.eqWidth"),
    (r".*", r".*_ew", "spect.line.eqWidth"),
    (r".*", r".*_sigma", "phys.veloc.dispersion"),
    (r".*", r".*_vshift", "spect.dopplerVeloc"),
    (r".*", r"vdisp", "phys.veloc.dispersion"),
    (r".*", r"logmstar", "phys.mass"),
    (r".*", r"sfr", "phys.SFR"),
    (r".*", r"age", "time.age"),
    (r".*", r".*_ivar", "stat.weight"),
    (r".*", r".*_err", "stat.error"),
    (r".*", r".*chi2.*", "stat.fit.chi2"),
    (r".*", r"snr_.*|tsnr2_.*", "stat.snr"),
    (r".*", r".*flux.*|.*_cont|.*_amp|.*_modelamp", "phot.flux"),
    (r".*", r"mag_.*|.*_mag", "phot.mag"),
    (r".*", r"coeff", "stat.fit.param"),
)


def ucd(table: str, column: str) -> str:
    """The UCD of ``table.column`` from UCD_RULES ('' when no rule knows it)."""
    for tpat, cpat, word in UCD_RULES:
        if re.fullmatch(tpat, table) and re.fullmatch(cpat, column):
            axis = re.match(r"[xyz]", column)
            return word.format(axis.group(0) if axis else "")
    return ""


#: PostgreSQL element type -> DaCHS type (its column types are SQL type names).  ``text`` is
#: served as DaCHS's ``unicode`` (VOTable unicodeChar): its ``text`` is VOTable ``char``,
#: whose values DaCHS writes in ASCII, a '?' for every other character (a Parquet file's
#: 'Ångström' was served as '?ngstr?m').
_DACHS = {"smallint": "smallint", "integer": "integer", "bigint": "bigint", "real": "real",
          "double precision": "double precision", "boolean": "boolean", "text": "unicode",
          "numeric": "double precision"}


def dachs_type(pg_type: str, shape: tuple = ()) -> Optional[str]:
    """The DaCHS column type of a PostgreSQL type (``format_type``), or None when DaCHS
    cannot serve it (json, timestamps with time zone, ...).  ``shape`` is the FITS cell
    shape: a 1-D array of fixed length is served with its length."""
    base = re.sub(r"\(.*\)", "", pg_type).strip()
    ndims = base.count("[]")
    base = base.replace("[]", "").strip()
    if base not in _DACHS:
        return None
    if ndims == 0:
        return _DACHS[base]
    if base == "text":
        return None                      # DaCHS has no arrays of strings
    if len(shape) > 1:
        return None                      # DaCHS writes 1-D arrays only (its VOTable fails on nested lists)
    if ndims == 1 and len(shape) == 1:
        return f"{_DACHS[base]}[{shape[0]}]"
    return f"{_DACHS[base]}[]"
