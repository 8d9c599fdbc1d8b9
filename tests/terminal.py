"""A real terminal for tests: a private tmux server running one command, its screen read as text."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.broker import wait_until


class Tmux:
    """A private tmux server (its own socket) running one command in a `width` x `height` window."""

    def __init__(self, command: str, width: int = 160, height: int = 45) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed; `make test` installs it (apt-get install tmux)")
        # A private server on its own socket, in a short path of its own (sockets have a length limit).
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-tmux-"))
        self.socket = str(self.dir / "socket")
        self.env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self.env.pop("TMUX", None)
        self.run("new-session", "-d", "-x", str(width), "-y", str(height), "-s", "top", command)

    def run(self, *args: str) -> str:
        proc = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True,
                              timeout=10, env=self.env)
        assert proc.returncode == 0, f"tmux {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def wait(self, pred: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        """Poll the screen until `pred(screen)` holds; returns that screen. A screen not drawn far
        enough for `pred` to read it (IndexError, StopIteration) does not hold yet."""
        seen = [""]

        def ok() -> bool:
            seen[0] = self.screen()
            try:
                return bool(pred(seen[0]))
            except (IndexError, StopIteration):
                return False
        try:
            wait_until(ok, timeout, interval=0.1, what=what)
        except TimeoutError as exc:
            raise AssertionError(f"{what}; the screen:\n{seen[0]}") from exc
        return seen[0]

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10,
                       env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)  # a server whose session ended leaves its socket


@contextmanager
def tmux(command: str) -> Iterator[Tmux]:
    t = Tmux(command)
    try:
        yield t
    finally:
        t.kill()


def section(screen: str, title: str) -> list[str]:
    """The data rows of one section of `vigil-agent top` (after its title, column heads and rule)."""
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3:]:
        if not line.strip() or line.startswith(("Standing alarms", "Recent alerts")):
            break
        rows.append(line)
    return rows
