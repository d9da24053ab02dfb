"""Names of the objects a load creates, the same for every load and for tap publish."""
from __future__ import annotations


def index_name(table: str, cols: tuple) -> str:
    """Deterministic index names (<= 63 bytes)."""
    name = f"{table}_{'_'.join(cols)}_idx"
    if len(name) > 63:
        import hashlib
        name = f"{table[:40]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}_idx"
    return name
