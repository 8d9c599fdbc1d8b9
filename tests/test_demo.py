"""The demo, as `make demo` runs it: the steps, an alert, where the files are; nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_shows_steps_alerts_and_files(tmp_path: Path) -> None:
    """The demo trains, serves and alerts on the failing pump; its output is for a person: the
    four steps, a one-line model summary (no metadata document), alerts, and where the files
    are; without a terminal no progress bar writes carriage returns into it."""
    proc = subprocess.run([sys.executable, "-m", "sim.demo", "--duration", "30", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for step in ("1/4", "2/4", "3/4", "4/4"):
        assert f"[demo] {step}" in out
    assert any(line.startswith("[alert]") and "pump-002" in line for line in out.splitlines())
    assert f"files (model, history, config, agent log) are in {tmp_path}" in out
    assert "[demo] model pump.pt (version " in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith(("{", "\""))], out[-3000:]
    assert "\r" not in out
    assert (tmp_path / "models" / "pump.pt").exists() and (tmp_path / "agent.log").exists()
