"""The web pages of a served schema: a landing page listing each table with its description,
row count, covered area and coverage picture, and links to its search form, cone search and
the TAP endpoint.  Written next to the resource descriptor (rd.WEB_DIR), which DaCHS serves as
static files, by the same path that keeps TAP_SCHEMA in sync (tap/service.py), so a load
that adds sky shows it at once.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Optional

from ..errors import LoaderError
from ..queries.coverage import Coverage
from . import rd

log = logging.getLogger(__name__)

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.5em;vertical-align:top;
text-align:left}img{width:22em}code{background:#f4f4f4;padding:0 .2em}.num{text-align:right}"""


def write(directory: Path, schema: str, metas: list, covered: dict, tap_url: str) -> Path:
    """Write the landing page (and each sky table's map) of ``schema`` to ``directory``;
    ``covered``: {table: queries.coverage.Coverage} of the sky tables."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [_row(directory, schema, m, covered.get(m.name)) for m in metas if m.kind in ("table", "view")]
    page = directory / "index.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(schema)}: desi-loader catalogs</title>
<style>{_STYLE}</style></head><body>
<h1>Schema <code>{html.escape(schema)}</code></h1>
<p>The tables desi-loader published, served by this TAP service:
<a href="{html.escape(tap_url)}">{html.escape(tap_url)}</a> (TOPCAT: VO &gt; Table Access Protocol Query;
pyvo: <code>pyvo.dal.TAPService("{html.escape(tap_url)}")</code>).</p>
<table id="tables"><thead><tr><th>table</th><th>description</th><th class="num">rows</th><th>coverage</th>
<th>search</th></tr></thead><tbody>
{"".join(rows)}</tbody></table>
</body></html>
""")
    tmp.replace(page)
    return page


def _row(directory: Path, schema: str, m, cov: Optional[Coverage]) -> str:
    name = html.escape(m.name)
    links = [f'<a href="{rd.cone_form_path(schema, m.name)}">search form</a>',
             f'<a href="/{schema}/{rd.RD_NAME}/{rd.service_id(m.name)}/scs.xml?">cone search (SCS)</a>'] \
        if m.sky and m.q3c_index and m.kind == "table" else []
    cover = _coverage(directory, cov) if cov is not None else ""
    return (f'<tr class="table" id="{name}"><td><code>{name}</code>'
            f'{" (view)" if m.kind == "view" else ""}</td><td>{html.escape(m.description)}</td>'
            f'<td class="num">{m.rows:,}</td><td>{cover}</td><td>{"<br>".join(links)}</td></tr>\n')


def _coverage(directory: Path, cov: Coverage) -> str:
    """The covered area and the map of a sky table (the map where matplotlib is installed)."""
    table = cov.table
    text = f"{cov.area_deg2:,.0f} deg² ({100 * cov.sky_fraction:.1f} % of the sky)"
    try:
        from ..queries import skymap
        skymap.draw(cov, str(directory / f"{table}.png"))
    except LoaderError as exc:            # no matplotlib: the figures without the picture
        log.info("no coverage picture for %s: %s", table, exc)
        return html.escape(text)
    return (f'{html.escape(text)}<br><a href="{html.escape(table)}.png"><img src="{html.escape(table)}.png" '
            f'alt="coverage of {html.escape(table)}" class="coverage"></a>')
