"""HTML for the dashboard: a tiny escaping formatter and the page layout (no template engine needed)."""

from __future__ import annotations

import datetime as dt
import html
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

PREFIX = "/dashboard"
NAV = (("overview", "Overview", "/"), ("scheduled", "Scheduled", "/scheduled"),
       ("orders", "Orders", "/orders"), ("failures", "Failures", "/failures"),
       ("webhooks", "Webhooks", "/webhooks"))


class Html(str):
    """Text that is already HTML: inserted as is, never escaped again."""

    __slots__ = ()


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Html):
            return value
        return html.escape(super().format_field(value, format_spec), quote=True)


_formatter = _Formatter()


def h(template: str, *args: Any, **kwargs: Any) -> Html:
    """`template.format(...)` with every argument escaped unless it is Html."""
    return Html(_formatter.format(template, *args, **kwargs))


def join(parts: Iterable[Html]) -> Html:
    """Concatenate HTML fragments."""
    return Html("".join(parts))


def url(path: str, **query: Any) -> str:
    """A dashboard URL with an optional query string (empty values left out)."""
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return PREFIX + path + ("?" + urlencode(q) if q else "")


def when(value: dt.datetime | float | None) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM:SSZ` (UTC), or a dash."""
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(seconds: float | None) -> str:
    """A duration in words: 4 s, 3 min, 2 h 5 min, 3 d."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def csrf_field(token: str) -> Html:
    """The hidden field every form that changes something carries."""
    return h('<input type="hidden" name="csrf_token" value="{}">', token)


def button_form(action: str, label: str, csrf: str, *, confirm: str | None = None,
                css: str = "", fields: dict[str, str | list[str]] | None = None,
                test_id: str | None = None, back: str | None = None) -> Html:
    """A one-button POST form; `confirm` asks the operator first (dashboard.js); `back` is where to return."""
    hidden = []
    for name, value in {**(fields or {}), **({"back": back} if back else {})}.items():
        for v in value if isinstance(value, list) else [value]:
            hidden.append(h('<input type="hidden" name="{}" value="{}">', name, v))
    return h('<form method="post" action="{}" class="inline"{}>{}{}<button type="submit" class="{}"{}>{}</button></form>',
             action, Html(h(' data-confirm="{}"', confirm)) if confirm else Html(""),
             csrf_field(csrf), join(hidden), css,
             Html(h(' data-testid="{}"', test_id)) if test_id else Html(""), label)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, empty: str = "Nothing here.",
          test_id: str | None = None) -> Html:
    """A table; cells are escaped unless Html."""
    body = [h("<tr>{}</tr>", join(h("<td>{}</td>", c) for c in row)) for row in rows]
    tid = h(' data-testid="{}"', test_id) if test_id else Html("")
    if not body:
        return h('<p class="empty"{}>{}</p>', tid, empty)
    return h('<table{}><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', tid,
             join(h("<th>{}</th>", x) for x in headers), join(body))


def page(title: str, body: Html, *, operator: str | None, csrf: str | None, active: str = "",
         paused_since: float | None = None, flash: str | None = None, page_id: str = "",
         status_note: str = "") -> Html:
    """The layout: navigation, the paused banner, a flash message, the body."""
    nav = Html("")
    if operator is not None and csrf is not None:
        links = join(h('<a href="{}"{}>{}</a>', url(path), Html(' class="active"') if key == active else Html(""), label)
                     for key, label, path in NAV)
        logout = h('<form method="post" action="{}" class="inline">{}<button type="submit" class="link">Log out</button></form>',
                   url("/logout"), csrf_field(csrf))
        nav = h('<nav><span class="brand">orderflow</span>{}<span class="who">{} · {}</span></nav>',
                links, operator, logout)
    banner = h('<div id="paused-banner" class="paused-banner"{}>Ingest consumption is PAUSED{}: orders are '
               'accepted (202) and wait in Redis. <a href="{}">Resume on the overview</a></div>',
               Html("") if paused_since is not None else Html(" hidden"),
               Html(h('<span id="paused-since"> since {}</span>', when(paused_since))) if paused_since else Html(""),
               url("/") + "#ingest")
    flash_html = h('<div class="flash" role="status">{}</div>', flash) if flash else Html("")
    return h("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · orderflow</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head><body data-page="{page_id}" data-status="{status_note}">
{nav}{banner}<main>{flash}<h1>{title}</h1>
{body}</main></body></html>
""", title=title, css=url("/static/dashboard.css"), js=url("/static/dashboard.js"), page_id=page_id,
             status_note=status_note, nav=nav, banner=banner, flash=flash_html, body=body)
