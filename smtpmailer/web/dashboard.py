"""The dashboard page: server-rendered HTML with inline SVG charts, no script, no CDN."""

from __future__ import annotations

import html
import time
from typing import Any

import attrs

from smtpmailer.queue import MessageInfo

CHART_WIDTH = 640
CHART_HEIGHT = 160
STATE_COLOURS = {
    "queued": "#1f77b4",
    "deferred": "#ff7f0e",
    "active": "#2ca02c",
    "held": "#9467bd",
    "failed": "#d62728",
}
RATE_COLOURS = {"sent": "#2ca02c", "deferred": "#ff7f0e", "failed": "#d62728"}


@attrs.frozen
class Sample:
    """One point of history: queue counts, and delivery outcomes per minute since the last."""

    time: float
    counts: dict[str, int]
    rates: dict[str, float]


@attrs.frozen
class DashboardView:
    version: str
    now: float
    started: float
    counts: dict[str, int]
    oldest_age: float | None
    health: dict[str, Any]
    history: tuple[Sample, ...]
    problems: tuple[MessageInfo, ...]
    relays: tuple[dict[str, Any], ...]
    paused: bool


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def line_chart(
    chart_id: str,
    title: str,
    history: tuple[Sample, ...],
    series: dict[str, str],
    value: Any,
    unit: str,
    now: float,
    span: float = 3600.0,
) -> str:
    """An SVG line chart of the last ``span`` seconds: one polyline per series."""
    points = {name: [(s.time, float(value(s, name))) for s in history] for name in series}
    top = max([v for line in points.values() for _, v in line] + [1.0])
    left = now - span

    def x(t: float) -> float:
        return round(40 + (t - left) / span * (CHART_WIDTH - 50), 1)

    def y(v: float) -> float:
        return round(CHART_HEIGHT - 20 - v / top * (CHART_HEIGHT - 40), 1)

    parts = [
        f'<svg class="chart" id="{chart_id}" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{html.escape(title)}</title>",
        f'<line x1="40" y1="{CHART_HEIGHT - 20}" x2="{CHART_WIDTH - 10}" '
        f'y2="{CHART_HEIGHT - 20}" stroke="#999"/>',
        f'<line x1="40" y1="20" x2="40" y2="{CHART_HEIGHT - 20}" stroke="#999"/>',
        f'<text x="4" y="24" font-size="11">{top:.3g}{html.escape(unit)}</text>',
        f'<text x="4" y="{CHART_HEIGHT - 22}" font-size="11">0</text>',
        f'<text x="40" y="{CHART_HEIGHT - 4}" font-size="11">-60m</text>',
        f'<text x="{CHART_WIDTH - 40}" y="{CHART_HEIGHT - 4}" font-size="11">now</text>',
    ]
    for index, (name, colour) in enumerate(series.items()):
        line = [(t, v) for t, v in points[name] if t >= left]
        coordinates = " ".join(f"{x(t)},{y(v)}" for t, v in line)
        parts.append(
            f'<polyline class="series" data-series="{name}" fill="none" stroke="{colour}" '
            f'stroke-width="2" points="{coordinates}"/>'
        )
        if line:  # the latest value as a dot: visible even before there is a line
            t, v = line[-1]
            parts.append(f'<circle cx="{x(t)}" cy="{y(v)}" r="3" fill="{colour}"/>')
        parts.append(
            f'<text x="{60 + index * 90}" y="14" font-size="11" fill="{colour}">'
            f"&#9632; {name}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_live(view: DashboardView) -> str:
    """What changes: health, counts, charts, relays and problems. The page fetches it every
    few seconds (``/?part=live``) and puts it in place; without script, reload the page."""
    esc = html.escape
    status = view.health.get("status", "?")
    reasons = "".join(f"<li>{esc(r)}</li>" for r in view.health.get("reasons", []))
    counts = "".join(
        f'<tr><th>{state}</th><td class="count" data-state="{state}">{view.counts.get(state, 0)}'
        "</td></tr>"
        for state in ("queued", "deferred", "active", "held", "failed", "sent")
    )
    depth = line_chart(
        "queue-depth",
        "Queue depth by state, last hour",
        view.history,
        STATE_COLOURS,
        lambda sample, name: sample.counts.get(name, 0),
        "",
        view.now,
    )
    rate = line_chart(
        "delivery-rate",
        "Deliveries per minute, last hour",
        view.history,
        RATE_COLOURS,
        lambda sample, name: sample.rates.get(name, 0.0),
        "/min",
        view.now,
    )
    problems = (
        "".join(
            f'<tr class="problem"><td><a href="/messages/{esc(m.id)}"><code>{esc(m.id)}</code>'
            f"</a></td><td>{esc(m.state)}</td>"
            f"<td>{esc(', '.join(r.address for r in m.recipients))}</td><td>{m.attempts}</td>"
            f"<td>{esc(m.last_error or '')}</td></tr>"
            for m in view.problems
        )
        or '<tr><td colspan="5">none</td></tr>'
    )
    relays = (
        "".join(
            f'<tr class="relay"><td>{esc(r["name"])}</td><td>{r["connections"]}</td>'
            f"<td>{_age(view.now - r['last_success']) + ' ago' if r['last_success'] else '-'}</td>"
            f"<td>{esc(r['last_error'] or '')}</td></tr>"
            for r in view.relays
        )
        or '<tr><td colspan="4">no connection made yet</td></tr>'
    )
    paused = (
        '<p class="paused"><strong>Delivery is paused</strong> (manhole: resume())</p>'
        if view.paused
        else ""
    )
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.now))
    health = (
        f'<p id="health" class="status-{esc(status)}">Health: <strong>{esc(status)}</strong></p>'
    )
    return f"""{health}
<ul>{reasons}</ul>
{paused}
<p>Up {_age(view.now - view.started)}; oldest waiting message {_age(view.oldest_age)};
as of <span id="generated">{generated}</span>.</p>
<h2>Queue</h2>
<table id="counts">{counts}</table>
<div class="charts">{depth}{rate}</div>
<h2>Relays</h2>
<table id="relays"><tr><th>relay</th><th>open connections</th><th>last success</th>
<th>last error</th></tr>{relays}</table>
<h2>Latest failures and deferrals</h2>
<table id="problems"><tr><th>id</th><th>state</th><th>recipients</th><th>attempts</th>
<th>reason</th></tr>{problems}</table>
"""


# Every few seconds the page asks for what changed and puts it in place (no reload, no
# scroll jump); a failed fetch leaves the page as it was.
_LIVE_SCRIPT = """
<script>
setInterval(function () {
  fetch("/?part=live", {credentials: "same-origin", cache: "no-store"})
    .then(function (answer) { return answer.ok ? answer.text() : null; })
    .then(function (text) { if (text) { document.getElementById("live").innerHTML = text; } })
    .catch(function () {});
}, 5000);
</script>
"""


def render_dashboard(view: DashboardView) -> str:
    from smtpmailer.web.search_page import search_form

    esc = html.escape
    status = view.health.get("status", "?")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>smtpmailer: {esc(status)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
.status-ok {{ color: #2ca02c; }} .status-fail {{ color: #d62728; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
</style></head>
<body>
<h1>smtpmailer <small>{esc(view.version)}</small></h1>
{search_form()}
<div id="live">{render_live(view)}</div>
{_LIVE_SCRIPT}
</body></html>
"""
