"""`vigil-agent top` in a real terminal (tmux) against a real broker and agent, and its errors."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import rfc3339_ms
from agent.top.render import short_ts
from tests.broker import Broker, free_port, wait_until
from tests.ops.conftest import ts
from tests.procs import BIN
from tests.terminal import Tmux, section, tmux

pytestmark = pytest.mark.integration


@contextmanager
def top_view(ops: Any, tmp_path: Path, *args: str) -> Iterator[Tmux]:
    """`vigil-agent top` on the test's broker and prefix as alice, in tmux; on leaving, `q` must
    end it with exit code 0."""
    rc_file = tmp_path / f"top-{free_port()}.rc"
    cmd = (f"{BIN / 'vigil-agent'} top --broker {ops.broker.url} --prefix {ops.prefix} --operator alice "
           f"{' '.join(args)}; echo $? > {rc_file}")
    with tmux(cmd) as term:
        # The sync asset's retained risk on screen: the view's subscriptions are in place.
        term.wait(lambda s: any("sync" in r for r in section(s, "Assets by risk")),
                  "the view lists the sync asset")
        yield term
        term.keys("q")
        wait_until(rc_file.exists, 10, what="the view to exit")
        assert rc_file.read_text().strip() == "0"


def standing(screen: str) -> list[list[str]]:
    """The standing-alarms rows, split on blanks: asset, level, state, since (2 words), risk, ..."""
    return [r.split() for r in section(screen, "Standing alarms")]


def critical_pump_1(ops: Any) -> None:
    """pump-2 at 0.30 (ok) and pump-1 raised to critical at 0.90; the agent's alert seen."""
    ops.readings("pump-2", [0.1, 0.3], start=0)
    ops.readings("pump-1", [0.1, 0.9], start=0)
    wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical"], 10, what="critical")


def test_top_shows_the_alert_first_and_acknowledges_it(ops_factory: Any, tmp_path: Path) -> None:
    """In a real terminal: the asset with the alert is listed first with its level and stands
    unacknowledged; `a` on it makes the agent republish the alert acknowledged by the operator,
    reply `ok` (on the status line) and publish the standing alarm acknowledged, which a view
    started afterwards shows from the retained summary alone; `q` exits 0."""
    ops = ops_factory()
    agent_id = f"gw-{ops.prefix}"
    with top_view(ops, tmp_path) as term:
        critical_pump_1(ops)
        screen = term.wait(lambda s: "Recent alerts (1)" in s and "Assets by risk (3)" in s
                           and "0.30" in s and "Standing alarms (1)" in s,
                           "the alert, its standing alarm and three assets on screen")
        rows = section(screen, "Assets by risk")
        assert [r.lstrip("▶ ").split()[0] for r in rows] == ["pump-1", "pump-2", "sync"], screen
        first = rows[0].split()
        assert first[:5] == ["▶", "pump-1", "critical", "0.90", "█"] and "UNACK" in first, screen
        alert_row = section(screen, "Recent alerts")[0]
        assert "pump-1" in alert_row and "ok→critical" in alert_row and "unacknowledged" in alert_row
        stands = standing(screen)
        assert [r[:3] + r[5:6] for r in stands] == [["pump-1", "critical", "unacknowledged", "0.90"]], screen

        term.keys("Down")  # select pump-2, then back to pump-1
        term.wait(lambda s: section(s, "Assets by risk")[1].startswith("▶  pump-2"), "pump-2 selected")
        term.keys("k")
        term.wait(lambda s: section(s, "Assets by risk")[0].startswith("▶  pump-1"), "pump-1 selected")
        term.keys("a")
        wait_until(lambda: len(ops.alerts("pump-1")) == 2, 10, what="the alert republished")
        acked = ops.alerts("pump-1")[1]
        assert acked["alert_id"] == ops.alerts("pump-1")[0]["alert_id"]
        assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "alice")
        screen = term.wait(lambda s: section(s, "Recent alerts")[0].split()[5] == "acknowledged"
                           and f"ack pump-1: ok from {agent_id}" in s and standing(s)[0][2] == "acknowledged",
                           "the alert and the standing alarm shown acknowledged, the agent's reply")
        assert section(screen, "Recent alerts")[0].split()[6] == "alice"
        assert section(screen, "Assets by risk")[0].split()[5] == "ack"
        assert [r[:3] for r in standing(screen)] == [["pump-1", "critical", "acknowledged"]], screen

    # A view that connects now hears no alert, only what the broker keeps: the standing alarm.
    wait_until(lambda: (ops.standing("pump-1") or {}).get("state") == "acknowledged", 10,
               what="the retained summary acknowledged")
    with top_view(ops, tmp_path) as term:
        screen = term.wait(lambda s: bool(standing(s)), "the retained standing alarm on screen")
        assert "Recent alerts (0)" in screen
        assert [r[:3] + r[5:6] for r in standing(screen)] == [["pump-1", "critical", "acknowledged", "0.90"]]
        first = section(screen, "Assets by risk")[0].split()
        assert first[:6] == ["▶", "pump-1", "critical", "0.90", "█", "ack"], screen


def test_top_shelves_and_shows_a_refused_shelf_with_its_reason(ops_factory: Any, tmp_path: Path) -> None:
    """`s` for longer than the agent's [alarms] max_shelve_s: the agent's refusal and its reason
    on the status line, the alarm still standing unacknowledged; `s` within the limit: `ok`, and
    the standing alarm shown shelved until the event time plus the shelf, by the operator."""
    ops = ops_factory(extra="[alarms]\nmax_shelve_s = 3600\n")
    agent_id = f"gw-{ops.prefix}"
    critical_pump_1(ops)
    with top_view(ops, tmp_path, "--shelve-for", "2h") as term:
        term.wait(lambda s: standing(s)[0][:3] == ["pump-1", "critical", "unacknowledged"],
                  "pump-1 standing")
        term.keys("s")
        refusal = f"shelve pump-1: rejected (longer than [alarms] max_shelve_s (3600 s)) from {agent_id}"
        screen = term.wait(lambda s: refusal in s, "the refusal and its reason on screen")
        assert [r[:3] for r in standing(screen)] == [["pump-1", "critical", "unacknowledged"]], screen
    assert ops.capture.json(f"{ops.prefix}/alarms/shelved/") == []

    with top_view(ops, tmp_path, "--shelve-for", "30m") as term:
        term.wait(lambda s: section(s, "Assets by risk")[0].startswith("▶  pump-1"), "pump-1 selected")
        term.keys("s")
        until = short_ts(rfc3339_ms(ts(1) + 1800))
        screen = term.wait(lambda s: f"shelve pump-1: ok from {agent_id}" in s
                           and standing(s)[0][2] == "shelved", "the shelf on screen")
        row = section(screen, "Standing alarms")[0]
        assert row.split()[:3] == ["pump-1", "critical", "shelved"], screen
        assert row.rstrip().endswith(f"shelved to {until} by alice"), screen
        assert f"SHELVED→{until[6:11]}" in section(screen, "Assets by risk")[0], screen
    assert (ops.standing("pump-1") or {}).get("shelved_by") == "alice"


def _top(*args: str, tty: bool, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """`vigil-agent top` with stdin and stdout on a pseudo-terminal (tty) or not; stderr captured."""
    argv = [str(BIN / "vigil-agent"), "top", *args]
    if not tty:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    master, slave = pty.openpty()
    try:
        return subprocess.run(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, timeout=timeout)
    finally:
        os.close(slave)
        os.close(master)


def test_top_without_a_terminal_says_so(broker: Broker) -> None:
    """Not on a terminal (stdin and stdout no TTY), the view exits 2 with a one-line reason."""
    proc = _top("--broker", broker.url, tty=False)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert "\n" not in err and "needs an interactive terminal" in err, err
    assert proc.stdout == b""


def test_top_unreachable_broker_one_line() -> None:
    """On a terminal, a broker that cannot be reached is a one-line reason and exit code 2."""
    port = free_port()  # nothing listens there
    proc = _top("--broker", f"mqtt://127.0.0.1:{port}", tty=True)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert err == f"vigil-agent: error: cannot reach 127.0.0.1:{port}: Connection refused", err


def test_top_refused_credentials_one_line(tmp_path: Path) -> None:
    """A broker that refuses the login (wrong password from --password-file): one line, exit code 2."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "vigil-operator", "right"], check=True,
                   capture_output=True, timeout=10)
    b = Broker(tmp_path / "mosquitto", password_file=passwd)
    b.start()
    try:
        (tmp_path / "pw").write_text("wrong\n")
        proc = _top("--broker", b.url, "--username", "vigil-operator", "--password-file",
                    str(tmp_path / "pw"), tty=True)
    finally:
        b.stop()
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert "\n" not in err and err.startswith("vigil-agent: error: the broker at") and "refused" in err, err
