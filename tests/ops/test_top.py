"""`vigil-agent top` in a real terminal (tmux) against a real broker and agent, and its errors."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN
from tests.terminal import section, tmux

pytestmark = pytest.mark.integration


def test_top_shows_the_alert_first_and_acknowledges_it(ops_factory: Any, tmp_path: Path) -> None:
    """In a real terminal: the asset with the alert is listed first with its level; `a` on it makes
    the agent republish the alert acknowledged by the operator, which the view shows; `q` exits 0."""
    ops = ops_factory()
    rc_file = tmp_path / "top.rc"
    cmd = (f"{BIN / 'vigil-agent'} top --broker {ops.broker.url} --prefix {ops.prefix} --operator alice; "
           f"echo $? > {rc_file}")
    with tmux(cmd) as term:
        # The sync asset's retained risk on screen: the view's subscriptions are in place.
        term.wait(lambda s: "Assets by risk (1)" in s and "sync" in s, "the view lists the sync asset")
        ops.readings("pump-2", [0.1, 0.3], start=0)
        ops.readings("pump-1", [0.1, 0.9], start=0)
        wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical"], 10, what="critical")
        screen = term.wait(lambda s: "Recent alerts (1)" in s and "Assets by risk (3)" in s
                           and "0.30" in s, "the alert and three assets on screen")
        rows = section(screen, "Assets by risk")
        assert [r.lstrip("▶ ").split()[0] for r in rows] == ["pump-1", "pump-2", "sync"], screen
        first = rows[0].split()
        assert first[:5] == ["▶", "pump-1", "critical", "0.90", "█"] and "UNACK" in first, screen
        alert_row = section(screen, "Recent alerts")[0]
        assert "pump-1" in alert_row and "ok→critical" in alert_row and "unacknowledged" in alert_row

        term.keys("Down")  # select pump-2, then back to pump-1
        term.wait(lambda s: section(s, "Assets by risk")[1].startswith("▶  pump-2"), "pump-2 selected")
        term.keys("k")
        term.wait(lambda s: section(s, "Assets by risk")[0].startswith("▶  pump-1"), "pump-1 selected")
        term.keys("a")
        wait_until(lambda: len(ops.alerts("pump-1")) == 2, 10, what="the alert republished")
        acked = ops.alerts("pump-1")[1]
        assert acked["alert_id"] == ops.alerts("pump-1")[0]["alert_id"]
        assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "alice")
        screen = term.wait(lambda s: section(s, "Recent alerts")[0].split()[5] == "acknowledged",
                           "the alert shown acknowledged")
        assert section(screen, "Recent alerts")[0].split()[6] == "alice"
        assert section(screen, "Assets by risk")[0].split()[5] == "ack"
        assert "ack pump-1:" in screen

        term.keys("q")
        wait_until(rc_file.exists, 10, what="the view to exit")
        assert rc_file.read_text().strip() == "0"


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
