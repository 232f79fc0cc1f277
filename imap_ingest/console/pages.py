"""The console's pages: server-rendered HTML, every value escaped (mail subjects are
hostile), no script, readable on a phone; the hourly chart is inline SVG. Pure."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode

from ..config import Account, Config, Folder
from ..flow import Flow, FolderFlow
from .mail import Aside

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:70em;padding:.5em;color:#222}
table{border-collapse:collapse;width:100%;margin-bottom:1em}
td,th{border-bottom:1px solid #ddd;padding:.3em;text-align:left;vertical-align:top;
overflow-wrap:break-word}
.ok{background:#dfd}.stalled{background:#f99}.unready{background:#fd8}
.wrap{overflow-x:auto}pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;
padding:.5em}button{padding:.4em 1em;margin:.1em;white-space:nowrap}form{display:inline}
"""
COLOURS = {"submitted": "#2a2", "failed": "#c22", "held": "#c80", "quarantined": "#808",
           "deferred": "#888", "skipped": "#48c", "waiting": "#aaa"}


def page(title: str, body: str) -> bytes:
    """A whole page around ``body`` (already escaped HTML)."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{body}</body></html>").encode()


def login(failed: bool = False) -> bytes:
    warn = "<p class=stalled>That token is not the console's.</p>" if failed else ""
    return page("imap-ingest console", f"{warn}<form method=post action=/login>"
                "<label>Token <input type=password name=token autocomplete=off "
                "autofocus required></label> <button type=submit>Log in</button></form>")


def _state(f: FolderFlow) -> tuple[str, str]:
    if f.stalled:
        return "stalled", f"stalled: {f.stalled}"
    if not f.ready:
        return "unready", "auth_failed" if f.auth_failed else "not connected"
    return "ok", "flowing"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], classes: Iterable[str] = ()
           ) -> str:
    """A table of already-escaped cells."""
    marks = list(classes)
    cells = "".join(f"<tr class='{marks[i] if i < len(marks) else ''}'>"
                    + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                    for i, row in enumerate(rows))
    return ("<div class=wrap><table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head)
            + f"</tr>{cells}</table></div>")


def ways(config: Config) -> dict[str, tuple[str, str]]:
    """Each folder's way in (pushed or polled) and out (what becomes of accepted and of
    refused mail), by ``account/folder``; what POP3 cannot do is said so."""
    return {f"{account.name}/{folder.name}": (_way_in(account, folder),
                                              _way_out(account, folder))
            for account in config.accounts for folder in account.folders}


def _way_in(account: Account, folder: Folder) -> str:
    every = f"polled every {folder.interval:.0f} s"
    if not account.idles:
        return f"POP3: {every} (no IDLE)"
    if folder.idle is False:
        return f"IMAP: {every}"
    return "IMAP: pushed (IDLE)" + ("" if folder.idle else f" when offered, else {every}")


def _way_out(account: Account, folder: Folder) -> str:
    if account.has_folders:
        return (f"accepted: {_moved(folder.move_on_success, 'deleted')}; refused: "
                f"{_moved(folder.move_on_failure, 'marked in place')}")
    copies = [str(where) for where in (folder.failure_folder, folder.failure_spool) if where]
    return ("accepted: " + ("deleted (keep: false)" if not account.keep
                            else "left on the server (keep: true)")
            + "; refused: left on the server"
            + (f", copied to {' or else '.join(copies)}" if copies else "")
            + ", Retry releases it in the ledger; moves: none (POP3 has no folders)")


def _moved(to: str | None, otherwise: str) -> str:
    return f"moved to {to}" if to else otherwise


def _button(action: str, label: str, item: Aside, csrf: str) -> str:
    return (f"<form method=post action=/{action}>"
            + "".join(f"<input type=hidden name={n} value='{escape(v)}'>" for n, v in (
                ("account", item.account), ("folder", item.folder), ("uid", str(item.uid)),
                ("csrf", csrf)))
            + f"<button type=submit name=do value={action}>{escape(label)}</button></form>")


def _where(item: Aside) -> str:
    return urlencode({"account": item.account, "folder": item.folder, "uid": item.uid})


def dashboard(flow: Flow, aside: list[Aside], latest: list[dict[str, object]],
              hourly: list[tuple[int, str, int]], csrf: str, notice: str,
              way_of: Mapping[str, tuple[str, str]]) -> bytes:
    """Folders (their state, and how mail comes in and goes out), targets failing, messages
    set aside, the latest messages, and the chart."""
    states = [_state(f) for f in flow.folders]
    folders = _table(
        ["folder", "state", "mail", "after", "oldest pending", "last pass", "waiting", "held",
         "failed", "quarantined", "last error"],
        ([escape(f.name), escape(why), *(escape(way) for way in way_of.get(f.name, ("", ""))),
          _seconds(f.oldest_pending), _seconds(f.since_pass),
          str(f.waiting), str(f.held), str(f.failed), str(f.quarantined),
          escape(f.last_error or "")] for f, (_, why) in zip(flow.folders, states, strict=True)),
        (kind for kind, _ in states))
    targets = "".join(f"<p class=stalled>target {escape(n)} failing: {escape(e)}</p>"
                      for n, e in flow.failing.items())
    held = _table(["kind", "where", "subject", "from", "reason", ""], (
        [escape(i.kind), escape(f"{i.account}/{i.folder} uid {i.uid}"),
         f"<a href='/message?{escape(_where(i))}'>{escape(i.subject)}</a>", escape(i.sender),
         escape(i.reason),
         _button("release", "Release", i, csrf) if i.kind == "held"
         else _button("retry", "Retry", i, csrf)] for i in aside))
    recent = _table(["when", "folder", "uid", "rule", "outcome", "reason", "ticket"], (
        [_clock(row["updated"]), escape(f"{row['account']}/{row['folder']}"),
         escape(str(row["uid"])), escape(str(row["rule"] or "")),
         escape(str(row["outcome"] or row["state"])), escape(str(row["reason"] or "")),
         escape(str(row["ticket"] or ""))] for row in latest))
    top = f"<p class=ok>{escape(notice)}</p>" if notice else ""
    logout = (f"<form method=post action=/logout><input type=hidden name=csrf "
              f"value='{escape(csrf)}'><button type=submit>Log out</button></form>")
    return page("imap-ingest console", f"{top}{logout}<h2>Folders</h2>{folders}{targets}"
                f"<h2>Set aside</h2>{held}<h2>Messages per hour</h2>{chart(hourly)}"
                f"<h2>Latest messages</h2>{recent}")


def message(item: Aside, trace: list[str], raw_size: int, csrf: str) -> bytes:
    """One message set aside: its trace, a download of its bytes, and its button."""
    button = (_button("release", "Release", item, csrf) if item.kind == "held"
              else _button("retry", "Retry", item, csrf))
    return page(f"{item.subject}", f"<p><a href=/>back</a></p><p>{escape(item.account)}/"
                f"{escape(item.folder)} uid {item.uid}, {raw_size} bytes: "
                f"<a href='/raw?{escape(_where(item))}'>download</a></p>{button}"
                f"<h2>What explain says</h2><pre>{escape(chr(10).join(trace))}</pre>")


def chart(hourly: list[tuple[int, str, int]], width: int = 600, height: int = 160,
          slots: int = 24) -> str:
    """Messages per hour by outcome over the last ``slots`` hours with any, stacked bars,
    as inline SVG."""
    if not hourly:
        return "<p>No messages yet.</p>"
    hours: dict[int, dict[str, int]] = defaultdict(dict)
    for hour, outcome, count in hourly:
        hours[hour][outcome] = count
    first = max(hours) - (slots - 1) * 3600
    hours = defaultdict(dict, {h: by for h, by in hours.items() if h >= first})
    peak = max(sum(by.values()) for by in hours.values())
    bar = width / slots
    shapes = []
    for hour, by in sorted(hours.items()):
        x, y = (hour - first) // 3600 * bar, float(height)
        for outcome, count in sorted(by.items()):
            h = count / peak * (height - 20)
            y -= h
            shapes.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(bar - 2, 1):.1f}' "
                          f"height='{h:.1f}' fill='{COLOURS.get(outcome, '#555')}'>"
                          f"<title>{escape(outcome)}: {count}</title></rect>")
    legend = " ".join(f"<span style='color:{COLOURS.get(o, '#555')}'>&#9632; {escape(o)}</span>"
                      for o in sorted({o for by in hours.values() for o in by}))
    return (f"<svg viewBox='0 0 {width} {height}' width='100%' role=img "
            f"aria-label='messages per hour by outcome'>{''.join(shapes)}"
            f"<text x='2' y='12' font-size='12'>peak {peak}/h</text></svg><p>{legend}</p>")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _clock(value: object) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(str(value))))
