"""The compact data models shipped with the package (pure data, no I/O beyond the JSON)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def datamodel(catalog: str) -> dict:
    """The data model of ``catalog`` ('fastspecfit' or 'desivast'), from desi_loader/data/*.json."""
    text = resources.files("desi_loader").joinpath(f"data/{catalog}.json").read_text()
    return json.loads(text)
