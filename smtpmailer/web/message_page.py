"""The dashboard's page for one message (``/messages/ID``): its envelope, each recipient's
state, what built it (a template and its variables, secrets redacted when it was queued),
every attempt kept, and its headers while the content is kept. Server-rendered HTML."""

from __future__ import annotations

import datetime
import html

from smtpmailer.queue import MessageInfo, priority_name


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _buttons(info: MessageInfo, tokens: dict[str, str]) -> str:
    """The actions this message's state allows, as forms that POST with their token."""
    allowed = {
        "retry": info.state in ("deferred", "failed"),
        "hold": info.state in ("queued", "deferred"),
        "release": info.state == "held",
        "delete": info.state != "active",
    }
    return "".join(
        f'<form class="action" method="post" action="/messages/{html.escape(info.id)}/{action}">'
        f'<input type="hidden" name="csrf" value="{tokens[action]}">'
        f'<button type="submit" id="{action}">{action}</button></form>'
        for action, ok in allowed.items()
        if ok and action in tokens
    )


def render_message_page(
    info: MessageInfo, now: float, head: str | None, tokens: dict[str, str] | None = None
) -> str:
    esc = html.escape
    recipients = "".join(
        f'<tr class="recipient"><td>{esc(r.address)}</td><td>{esc(r.state)}</td>'
        f"<td>{esc(r.last_error or '')}</td></tr>"
        for r in info.recipients
    )
    attempts = (
        "".join(
            f'<tr class="attempt"><td>{a.number}</td><td>{esc(_when(a.at))}</td>'
            f"<td>{esc(a.relay or 'no relay reached')}"
            f"{' (' + esc(a.relay_address) + ')' if a.relay_address else ''}</td>"
            f"<td>{'' if a.seconds is None else f'{a.seconds:.2f} s'}</td>"
            "<td><ul>"
            + "".join(
                f"<li><code>{esc(r.address)}</code> {esc(r.status)}: {esc(r.reply)}</li>"
                for r in a.replies
            )
            + "</ul></td></tr>"
            for a in info.history
        )
        or '<tr><td colspan="5">no attempt yet</td></tr>'
    )
    built = f'<p id="origin">Built from {esc(info.origin_text() or "")}</p>' if info.origin else ""
    headers = (
        f'<h2>Headers</h2><p><a id="source" href="/messages/{esc(info.id)}/source">'
        f'Download the message</a></p><pre id="headers">{esc(head)}</pre>'
        if head is not None
        else "<p>Sent: its content is no longer kept.</p>"
    )
    waiting = (
        f"<tr><th>next attempt</th><td>{esc(_when(info.next_attempt))}</td></tr>"
        if info.state == "deferred"
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>smtpmailer: message {esc(info.id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left;
  vertical-align: top; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; }}
form.action {{ display: inline; margin-right: 0.5em; }}
</style></head>
<body>
<p><a href="/">&larr; dashboard</a></p>
<h1>Message <code id="message-id">{esc(info.id)}</code></h1>
<div id="actions">{_buttons(info, tokens or {})}</div>
<table id="envelope">
<tr><th>state</th><td id="state">{esc(info.state)}</td></tr>
<tr><th>priority</th><td>{esc(priority_name(info.priority))}</td></tr>
<tr><th>sender</th><td>{esc(info.sender or "<>")}</td></tr>
{f"<tr><th>subject</th><td>{esc(info.subject)}</td></tr>" if info.subject else ""}
<tr><th>queued</th><td>{esc(_when(info.created))}</td></tr>
<tr><th>attempts</th><td>{info.attempts}</td></tr>
<tr><th>size</th><td>{info.size} bytes</td></tr>
{waiting}
</table>
{built}
<h2>Recipients</h2>
<table id="recipients"><tr><th>recipient</th><th>state</th><th>last error</th></tr>
{recipients}</table>
<h2>Attempts</h2>
<table id="attempts"><tr><th>#</th><th>ended</th><th>relay</th><th>took</th><th>replies</th></tr>
{attempts}</table>
{headers}
</body></html>
"""
