"""Units on the way out: one translation of a FITS unit string for every format and service.

A FITS file's TUNIT is read the way its authors meant it, then written

- as a **VOUnit** (VOTable exports and the TAP service alike): composed units stay composed
  (``1e-28 erg / (Hz s)`` keeps its Hz: ``1e-28erg.Hz**-1.s**-1``), and what VOUnit cannot
  name is quoted, as the standard prescribes (little h ``'h'``, ``'nmgy'``, ``'percent'``);
- as an **astropy unit** (the Tables of ``query()``, hence ECSV): little h is astropy's own
  ``littleh`` (``astropy.cosmology.units``), never the hour that ``h`` is to astropy's parsers;
- FITS exports keep the file's TUNIT string as it was (a loaded HDU exports as its file).

Pure: no database; astropy.units is imported on first use (0.3 s).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

#: unit words of the DESI data models that are not VOUnit names: (VOUnit form, why)
_WORDS = {
    "h": ("'h'", "little h quoted: VOUnit has no h (astropy would read it as the hour)"),
    "nmgy": ("'nmgy'", "nanomaggy quoted: not a VOUnit"),
    "percent": ("'percent'", "percent quoted: VOUnit cannot scale a dimensionless unit"),
    "Msun": ("solMass", None),
    "Lsun": ("solLum", None),
}

#: strings of the data models that are not FITS unit strings at all
_NOT_FITS = {"(Mpc/h)^2": "Mpc2 h-2", "(Mpc/h)^3": "Mpc3 h-3", "Mpc/h": "Mpc h-1"}

_TOKEN = re.compile(r"^([A-Za-z]+)(-?\d+)?$")
_SCALE = re.compile(r"^[0-9.]+(?:[eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Unit:
    """A FITS unit as the ways out write it: ``vounit`` ('' when none) and what was done."""

    vounit: str
    note: Optional[str] = None      # set when the FITS string was not written as it is


def _tokens(text: str) -> Optional[tuple[float, list[tuple[str, int]]]]:
    """(scale, [(word, power)]) of a FITS-style unit string ``[scale] a b2 / (c d-1)``, in the
    file's order, without simplifying anything; None when it is not of that form."""
    text = _NOT_FITS.get(text, text)
    num, _, den = text.partition("/")
    scale = 1.0
    out: list[tuple[str, int]] = []
    for part, sign in ((num, 1), (den.strip().strip("()"), -1)):
        for word in part.split():
            if sign == 1 and not out and scale == 1.0 and _SCALE.match(word):
                scale = float(word)
                continue
            m = _TOKEN.match(word)
            if m is None:
                return None
            out.append((m.group(1), sign * int(m.group(2) or 1)))
    return (scale, out) if out else None


def _scale_text(scale: float) -> str:
    return "" if scale == 1.0 else f"{scale:g}".replace("e+0", "e+").replace("e-0", "e-")


@lru_cache(maxsize=None)
def translate(fits_unit: Optional[str]) -> Unit:
    """The VOUnit of a FITS TUNIT string, or an empty unit with the reason when it has none."""
    text = (fits_unit or "").strip()
    if not text:
        return Unit("")
    parsed = _tokens(text)
    if parsed is None:
        return _by_astropy(text)
    scale, words = parsed
    notes = []
    factors = []
    for word, power in words:
        name, why = _WORDS.get(word, (None, None))
        if name is None:
            name = _vounit_word(word)
            if name is None:
                return _by_astropy(text)
        if why:
            notes.append(why)
        factors.append(name if power == 1 else f"{name}**{power}")
    out = _scale_text(scale) + ".".join(factors)
    if text in _NOT_FITS:
        notes.insert(0, "not a FITS unit string")
    if not notes and not _same_words(out, text):
        notes.append(f"{text!r} written as the VOUnit {out!r}")
    return Unit(out, "; ".join(dict.fromkeys(notes)) or None)


def _vounit_word(word: str) -> Optional[str]:
    """A unit word as VOUnit writes it, if VOUnit knows it."""
    import astropy.units as u
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # VOUnit deprecations (erg, Angstrom) are still VOUnits
        try:
            return u.Unit(word, format="fits").to_string("vounit")
        except ValueError:
            try:
                u.Unit(word, format="vounit")
                return word
            except ValueError:
                return None


def _by_astropy(text: str) -> Unit:
    """What astropy makes of a string the tokenizer does not take."""
    import astropy.units as u
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = u.Unit(text, format="fits")
        except ValueError:
            try:
                parsed = u.Unit(text)
            except ValueError:
                return Unit("", f"{text!r} is not a unit astropy can read: left out")
        try:
            out = parsed.to_string("vounit")
        except ValueError as exc:
            return Unit("", f"{text!r} has no VOUnit form ({str(exc).split('.')[0]}): left out")
    return Unit(out, None if out == text or _same_words(out, text) else f"{text!r} written as the VOUnit {out!r}")


def _same_words(a: str, b: str) -> bool:
    return sorted(re.findall(r"[A-Za-z]+", a)) == sorted(re.findall(r"[A-Za-z]+", b))


@lru_cache(maxsize=None)
def astropy_unit(fits_unit: Optional[str]) -> Any:
    """The astropy unit the FITS string means, composed as the file wrote it (``erg / (Hz s)``
    keeps Hz and s), little h as ``astropy.cosmology.units.littleh``; None for no unit; the
    string itself when astropy cannot read it (astropy then keeps it as an UnrecognizedUnit)."""
    text = (fits_unit or "").strip()
    if not text:
        return None
    import astropy.units as u
    parsed = _tokens(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if parsed is not None:
            scale, words = parsed
            try:
                bases = [_astropy_word(w) for w, _ in words]
                return u.CompositeUnit(scale, bases, [p for _, p in words])
            except ValueError:
                pass
        try:
            return u.Unit(text, format="fits")
        except ValueError:
            return u.Unit(text, parse_strict="silent")


def _astropy_word(word: str) -> Any:
    import astropy.units as u
    if word == "h":
        import astropy.cosmology.units as cu
        return cu.littleh
    special = {"Msun": u.solMass, "Lsun": u.solLum, "nmgy": u.nmgy, "percent": u.percent}
    if word in special:
        return special[word]
    try:
        return u.Unit(word, format="fits")
    except ValueError:
        return u.Unit(word)
