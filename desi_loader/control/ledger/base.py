"""What the ledger's statement mixins (loads.py, files.py, tasks.py) use of the Session they
are mixed with in ``Ledger`` (sessions.Session): declared here for the type checker only."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional


class SessionFace:
    schema: str
    load_id: Optional[int]
    conn: Any

    if TYPE_CHECKING:
        def _run(self, text: str, args: tuple = ()) -> Any: ...

        def _commit(self) -> None: ...

        def bind(self, load_id: int) -> Any: ...
