"""The view's loop: apply what the broker sent, redraw, act on the operator's keys."""

from __future__ import annotations

import queue
import sys
import time

from rich.console import Console
from rich.live import Live

from agent.top.fleet import Fleet
from agent.top.link import TopLink, apply
from agent.top.render import Cursor, render
from agent.top.terminal import cbreak, read_keys

_STEPS = {"up": -1, "down": 1, "pgup": -10, "pgdown": 10}


def command_doc(fleet: Fleet, key: str, asset: str, operator: str, shelve_for: float) -> dict[str, object]:
    """The payload of the command a key sends for `asset`."""
    if key == "ack":
        # The alert the operator sees: an agent refuses it if a newer one came meanwhile.
        aid = fleet.latest_alert_id(asset)
        return {"alert_id": aid} if aid else {}
    if key == "shelve":
        return {"for_s": shelve_for, "reason": f"shelved in vigil-agent top by {operator}"}
    return {}


def loop(link: TopLink, prefix: str, operator: str, shelve_for: float, shelve_label: str) -> int:
    """Run until `q` (exit code 0) on the terminal of stdin and stdout."""
    fleet = Fleet(prefix)
    fleet.connected = True
    cursor = Cursor()
    sent: dict[int, bytes] = {}  # our commands' message ids -> correlation data, until the PUBACK
    console = Console()
    fd = sys.stdin.fileno()
    with cbreak(fd), Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                          redirect_stderr=False) as live:
        drawn_at = -1.0
        dirty = True
        while True:
            while True:
                try:
                    ev = link.events.get_nowait()
                except queue.Empty:
                    break
                apply(fleet, ev, sent)
                dirty = True
            status = fleet.status
            fleet.tick()
            dirty = dirty or status != fleet.status
            now = time.monotonic()
            if dirty or now - drawn_at >= 1.0:  # at least once a second: the clock
                width, height = console.size
                live.update(render(fleet, cursor, url=str(link.url), operator=operator, width=width,
                                   height=height, shelve_label=shelve_label,
                                   clock=time.strftime("%H:%M:%S")), refresh=True)
                drawn_at, dirty = now, False
            for key in read_keys(fd, 0.1):
                dirty = True
                rows = fleet.ranked()
                if key == "quit":
                    return 0
                if key in ("home", "end"):
                    cursor.move(rows, len(rows) * (1 if key == "end" else -1))
                    continue
                if key in _STEPS:
                    cursor.move(rows, _STEPS[key])
                    continue
                asset = cursor.selected(rows)
                if asset is None:
                    fleet.status = "no asset to command yet"
                    continue
                corr, mid = link.command(asset, key, command_doc(fleet, key, asset, operator, shelve_for))
                sent[mid] = corr
                fleet.sent(corr, key, asset)
