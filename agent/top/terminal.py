"""Keys from the terminal: cbreak mode (no echo, no line buffering, Ctrl-C still a signal)."""

from __future__ import annotations

import os
import select
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager

# What arrow keys send, in normal and in application cursor mode.
_SEQUENCES = {"\x1b[A": "up", "\x1bOA": "up", "\x1b[B": "down", "\x1bOB": "down",
              "\x1b[5~": "pgup", "\x1b[6~": "pgdown", "\x1b[H": "home", "\x1b[F": "end"}
_NAMES = {"k": "up", "j": "down", "a": "ack", "s": "shelve", "u": "unshelve", "q": "quit", "Q": "quit",
          "g": "home", "G": "end"}


def keys(data: str) -> list[str]:
    """Named keys in what the terminal sent (escape sequences included); unknown input is dropped."""
    out: list[str] = []
    i = 0
    while i < len(data):
        for seq, name in _SEQUENCES.items():
            if data.startswith(seq, i):
                out.append(name)
                i += len(seq)
                break
        else:
            key = _NAMES.get(data[i])
            if key is not None:
                out.append(key)
            i += 1
    return out


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """The terminal in cbreak mode for the duration; restored whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(fd: int, timeout: float) -> list[str]:
    """The keys pressed within `timeout` seconds (none if nothing was pressed)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    data = os.read(fd, 64)
    if not data:
        return ["quit"]  # the terminal went away
    return keys(data.decode("utf-8", "replace"))
