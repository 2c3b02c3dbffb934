"""The dashboard's search (``/search?q=``): messages by queue id, Message-ID, sender,
recipient or a fragment of the subject, newest first, a page at a time."""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Sequence

from smtpmailer.queue import MessageInfo


def search_form(query: str = "") -> str:
    return (
        '<form id="search" method="get" action="/search">'
        '<input type="search" name="q" id="q" size="40" '
        'placeholder="queue id, Message-ID, sender, recipient or subject" '
        f'value="{html.escape(query)}"> <button type="submit">Find</button></form>'
    )


def render_search_page(query: str, found: Sequence[MessageInfo], next_page: str | None) -> str:
    esc = html.escape
    rows = (
        "".join(
            f'<tr class="found"><td><a href="/messages/{esc(m.id)}"><code>{esc(m.id)}</code></a>'
            f"</td><td>{esc(m.state)}</td><td>{esc(m.sender or '<>')}</td>"
            f"<td>{esc(', '.join(r.address for r in m.recipients))}</td>"
            f"<td>{esc(m.subject or '')}</td></tr>"
            for m in found
        )
        or '<tr><td colspan="5">nothing found</td></tr>'
    )
    more = (
        f'<p><a id="next" href="/search?q={urllib.parse.quote(query)}&amp;after='
        f'{urllib.parse.quote(next_page)}">older &rarr;</a></p>'
        if next_page
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>smtpmailer: {esc(query)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
</style></head>
<body>
<p><a href="/">&larr; dashboard</a></p>
{search_form(query)}
<table id="results"><tr><th>id</th><th>state</th><th>sender</th><th>recipients</th>
<th>subject</th></tr>{rows}</table>
{more}
</body></html>
"""
