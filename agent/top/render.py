"""The operator's view drawn with rich: agents, assets by risk, standing alarms, recent alerts.

Everything here reads a `Fleet` and a `Cursor` and returns a renderable; nothing talks to
the broker or the terminal, so a test can render a fleet into a string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.top.fleet import Alert, AssetState, Fleet, Standing

SPARK = "▁▂▃▄▅▆▇█"
LEVEL_STYLE = {"critical": "bold red", "warning": "yellow", "ok": "green", "?": "dim"}
STATE_SHORT = {"unacknowledged": "UNACK", "acknowledged": "ack", "shelved": "shelved",
               "suppressed": "suppressed"}
KEYS = "↑/↓ j/k select   a acknowledge   s shelve {shelve}   u unshelve   q quit"


def sparkline(values: list[float]) -> str:
    """Risk values (0..1) as block characters, one a value, on a fixed 0..1 scale."""
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(" ")
        else:
            out.append(SPARK[min(len(SPARK) - 1, max(0, int(v * len(SPARK))))])
    return "".join(out)


def short_ts(ts: str | None) -> str:
    """RFC 3339 event time as `MM-DD HH:MM:SS` (the date matters: replays run in the past)."""
    if not ts or len(ts) < 19:
        return ts or ""
    return f"{ts[5:10]} {ts[11:19]}"


def fmt_risk(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def fmt_drivers(ds: list[tuple[str, float | None]], n: int = 3) -> str:
    return ", ".join(c if s is None else f"{c} {s:.2f}" for c, s in ds[:n])


def level_text(level: str) -> Text:
    return Text(level, style=LEVEL_STYLE.get(level, ""))


@dataclass
class Cursor:
    """The selected asset, by name, so it stays on the same asset when the order changes."""

    asset: str | None = None
    offset: int = 0  # the first asset row on screen

    def resolve(self, rows: list[AssetState]) -> int:
        """The selected row's index (the top row when nothing or a vanished asset is selected)."""
        for i, r in enumerate(rows):
            if r.asset == self.asset:
                return i
        return 0

    def move(self, rows: list[AssetState], step: int) -> None:
        if not rows:
            return
        i = max(0, min(len(rows) - 1, self.resolve(rows) + step))
        self.asset = rows[i].asset

    def selected(self, rows: list[AssetState]) -> str | None:
        return rows[self.resolve(rows)].asset if rows else None

    def window(self, n_rows: int, fit: int) -> range:
        """The rows on screen: `fit` of them, the selected one among them."""
        return range(self.offset, min(n_rows, self.offset + fit))

    def scroll(self, index: int, n_rows: int, fit: int) -> None:
        if index < self.offset:
            self.offset = index
        elif index >= self.offset + fit:
            self.offset = index - fit + 1
        self.offset = max(0, min(self.offset, max(0, n_rows - fit)))


def _flags(a: AssetState) -> str:
    f = []
    if a.stale:
        f.append("STALE")
    if a.maintenance:
        f.append("MAINT")
    if a.shelved_until:
        f.append(f"SHELVED→{short_ts(a.shelved_until)[6:11]}")
    if a.chattering:
        f.append("CHATTER")
    return " ".join(f)


def _agents(fleet: Fleet, limit: int) -> list[Text]:
    lines: list[Text] = []
    versions = fleet.model_versions()
    for ag in sorted(fleet.agents.values(), key=lambda a: a.agent_id)[:limit]:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{ag.agent_id} ", style="bold")
        t.append(ag.status or "?", style="green" if ag.status == "online" else "bold red")
        h = ag.health or {}
        if isinstance(h.get("mode"), str):
            t.append(f"  mode {h['mode']}")
        version = h.get("model_version") if isinstance(h.get("model_version"), str) else None
        if version is None and len(versions) == 1:
            version = next(iter(versions))
        if version:
            t.append(f"  model {version[:12]}")
        for key in ("outbox_depth", "outbox"):
            if isinstance(h.get(key), int):
                t.append(f"  outbox {h[key]}")
                break
        if "flood_active" in h:
            flood = h.get("flood_active") is True
            t.append(f"  flood {'YES' if flood else 'no'}", style="bold red" if flood else "")
            if isinstance(h.get("alarms_in_flood_window"), int) and isinstance(h.get("flood_threshold"), int):
                t.append(f" {h['alarms_in_flood_window']}/{h['flood_threshold']}")
        psi = h.get("drift_psi")
        if isinstance(psi, dict) and psi:
            worst = max((v for v in psi.values() if isinstance(v, int | float)), default=None)
            if worst is not None:
                t.append(f"  drift {worst:.2f}")
        if h.get("refit_recommended") is True:
            t.append("  REFIT RECOMMENDED", style="bold yellow")
        for key, label in (("shelved", "shelved"), ("in_maintenance", "maint"), ("chattering", "chatter")):
            v = h.get(key)
            if isinstance(v, list) and v:
                t.append(f"  {label}: {', '.join(str(x) for x in v[:4])}{' …' if len(v) > 4 else ''}")
        lines.append(t)
    if not lines:
        t = Text("no agent seen yet", style="dim")
        if versions:
            t.append(f"   model {', '.join(v[:12] for v in versions)}")
        lines.append(t)
    elif len(versions) > 1:
        used = ", ".join(f"{v[:12]} ({n} assets)" for v, n in versions.items())
        lines.append(Text(f"models in use: {used}", no_wrap=True, overflow="ellipsis"))
    return lines


def _table(width: int, *columns: tuple[str, int, str]) -> Table:
    """A table of (name, width, justify) columns; a width of 0 takes what the others leave."""
    # Between two columns: a cell's right padding and the (blank) divider.
    fixed = sum(w for _, w, _ in columns) + 2 * (len(columns) - 1)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for name, w, justify in columns:
        t.add_column(name, no_wrap=True, overflow="ellipsis", justify=justify,  # type: ignore[arg-type]
                     width=w or max(8, width - fixed - 1))
    return t


def _name_width(names: list[str], cap: int = 24) -> int:
    return min(cap, max([5, *(len(n) for n in names)]))


def _assets(fleet: Fleet, rows: list[AssetState], cursor: Cursor, fit: int, width: int) -> Table:
    sel = cursor.resolve(rows)
    cursor.scroll(sel, len(rows), fit)
    shown = [rows[i] for i in cursor.window(len(rows), fit)]
    t = _table(width, ("", 1, "left"), ("ASSET", _name_width([a.asset for a in shown]), "left"),
               ("LEVEL", 8, "left"), ("RISK", 4, "right"), ("TREND", 20, "left"), ("ALARM", 12, "left"),
               ("FLAGS", 0, "left"))
    for i, a in zip(cursor.window(len(rows), fit), shown, strict=True):
        state = fleet.alarm_state(a.asset)
        t.add_row("▶" if i == sel else "", a.asset, level_text(a.level), fmt_risk(a.risk),
                  Text(sparkline(list(a.trend)), style=LEVEL_STYLE.get(a.level, "")),
                  Text(STATE_SHORT.get(state, state) if state else "",
                       style="bold" if state == "unacknowledged" else ""),
                  _flags(a), style="reverse" if i == sel else "")
    return t


def _standing(rows: list[Standing], width: int) -> Table:
    t = _table(width, ("ASSET", _name_width([s.asset for s in rows]), "left"), ("LEVEL", 8, "left"),
               ("STATE", 14, "left"), ("SINCE", 14, "left"), ("RISK", 4, "right"), ("DRIVERS", 0, "left"))
    for s in rows:
        note = fmt_drivers(s.drivers)
        if s.shelved_until:
            note = f"shelved to {short_ts(s.shelved_until)}" + (f" by {s.shelved_by}" if s.shelved_by else "")
        elif s.maintenance_since:
            note = f"maintenance since {short_ts(s.maintenance_since)}"
        t.add_row(s.asset, level_text(s.level),
                  Text(s.state, style="bold" if s.state == "unacknowledged" else ""),
                  short_ts(s.ts), fmt_risk(s.risk), note)
    return t


def _alerts(rows: list[Alert], width: int) -> Table:
    by = [a.acknowledged_by for a in rows if a.acknowledged_by]
    t = _table(width, ("TIME", 14, "left"), ("ASSET", _name_width([a.asset for a in rows]), "left"),
               ("LEVEL", 16, "left"), ("RISK", 4, "right"), ("STATE", 14, "left"),
               ("BY", _name_width(by, 12) if by else 2, "left"), ("DRIVERS", 0, "left"))
    for a in rows:
        lv = Text(f"{a.previous_level}→")
        lv.append_text(level_text(a.level))
        t.add_row(short_ts(a.ts), a.asset, lv, fmt_risk(a.risk),
                  Text(a.state, style="bold" if a.state == "unacknowledged" else ""),
                  a.acknowledged_by or "", fmt_drivers(a.drivers) or (a.reason or ""))
    return t


def render(fleet: Fleet, cursor: Cursor, *, url: str, operator: str, width: int, height: int,
           shelve_label: str, clock: str) -> RenderableType:
    """The whole screen for a terminal of `width` columns and `height` lines."""
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append("Vigil top", style="bold")
    head.append(f"  {url}  prefix {fleet.prefix}  operator {operator}  {clock}")
    heads = [head]
    warn = Text(no_wrap=True, overflow="ellipsis")
    if not fleet.connected:
        warn.append("DISCONNECTED, reconnecting  ", style="bold red")
    if fleet.denied:
        warn.append(f"not allowed to read: {', '.join(fleet.denied)}  ", style="yellow")
    if fleet.unreadable:
        warn.append(f"{fleet.unreadable} unreadable messages", style="dim")
    if warn.plain:
        heads.append(warn)
    agents = _agents(fleet, 3)
    rows = fleet.ranked()
    standing = fleet.standing_alarms()
    alerts = fleet.recent()
    # Lines besides the asset rows: header, agents, 3 section titles with their table heads (2
    # each), the status line and the keys; the alarms and alerts get what they need up to a cap.
    n_standing = min(len(standing), 6)
    n_alerts = min(len(alerts), 8)
    fixed = len(heads) + len(agents) + 3 * 3 + 2 + n_standing + n_alerts
    fit = max(3, height - fixed)
    n_alerts = max(0, min(n_alerts, height - fixed + n_alerts - min(fit, len(rows))))
    status = Text(fleet.status or " ", style="bold cyan", no_wrap=True, overflow="ellipsis")
    return Group(
        *heads, *agents,
        Text(f"Assets by risk ({len(rows)})", style="bold underline"),
        _assets(fleet, rows, cursor, fit, width),
        Text(f"Standing alarms ({len(standing)})", style="bold underline"),
        _standing(standing[:n_standing], width),
        Text(f"Recent alerts ({len(alerts)})", style="bold underline"),
        _alerts(alerts[:n_alerts], width),
        status,
        Text(KEYS.format(shelve=shelve_label), style="dim", no_wrap=True, overflow="ellipsis"),
    )
