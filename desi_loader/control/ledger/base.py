"""What the ledger's statement mixins (loads.py, files.py, tasks.py) use of the Session they
are mixed with in ``Ledger`` (sessions.Session): declared here for the type checker only."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ..sessions import Tx

__all__ = ["SessionFace", "Tx"]


class SessionFace:
    schema: str
    load_id: Optional[int]
    conn: Any

    if TYPE_CHECKING:
        def _run(self, text: str, args: tuple = (), tx: Optional[Tx] = None) -> Any: ...

        def _end(self, tx: Optional[Tx]) -> None: ...

        def bound_id(self) -> int: ...

        def bind(self, load_id: int, tx: Optional[Tx] = None) -> Any: ...
