"""Where the shipped deploy files live, and the real tools that check them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.procs import BIN

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def tool(name: str) -> str:
    """The path of a command-line tool that `make deploy-tools` installs; fail loudly without it."""
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    if path is None:
        raise AssertionError(f"{name} is not installed: run `make deploy-tools` (part of `make test`)")
    return path


def run_tool(*args: str, cwd: Path | None = None, timeout: float = 60,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion, capturing its output as text."""
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, input=stdin, check=False)
