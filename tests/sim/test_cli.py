"""`vigil-sim` command line: help, one-line errors and exit codes, history in and out of process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main

VIGIL_SIM = Path(sys.executable).parent / "vigil-sim"


class TestHelp:
    @pytest.mark.parametrize("command", [[], ["history"], ["live"], ["replay"]])
    def test_every_command_has_help(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help exits 0 and prints a usage line for the top level and each subcommand."""
        assert main([*command, "--help"]) == 0
        assert capsys.readouterr().out.startswith("usage: vigil-sim")


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "reason"),
        [
            ([], "required: COMMAND"),
            (["fly"], "invalid choice"),
            (["history", "--assets", "-3", "--days", "1", "--out", "x"], "argument --assets"),
            (["history", "--assets", "2", "--days", "-1", "--out", "x"], "argument --days"),
            (["history", "--assets", "2", "--days", "1", "--out", "x", "--period", "0"],
             "argument --period"),
            (["history", "--assets", "2", "--days", "1"], "--out"),
            (["history", "--assets", "2", "--days", "1", "--out", "x", "--format", "xls"],
             "argument --format"),
            (["history", "--assets", "2", "--days", "1", "--out", "x", "--start", "noon"],
             "argument --start"),
            (["live", "--broker", "tcp://h:1", "--assets", "2"], "scheme must be"),
            (["live", "--broker", "mqtt://127.0.0.1:9", "--assets", "2", "--speed", "0"],
             "argument --speed"),
            (["live", "--broker", "mqtt://127.0.0.1:9", "--assets", "2", "--qos", "3"],
             "argument --qos"),
        ],
    )
    def test_exit_2_with_one_line(
        self, args: list[str], reason: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Bad arguments print exactly one `vigil-sim: error:` line on stderr and exit 2."""
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("vigil-sim: error:") and reason in captured.err
        assert captured.err.count("\n") == 1 and captured.out == ""

    def test_unwritable_output_exits_1(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An output path that is a file, not a directory, fails at run time: exit 1, one line."""
        blocker = tmp_path / "file"
        blocker.write_text("")
        assert main(["history", "--assets", "1", "--days", "0.01", "--out", str(blocker)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vigil-sim: error:") and err.count("\n") == 1


class TestHistoryCommand:
    def test_in_process_writes_both_files(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`history` writes history and events files and names them on stdout."""
        rc = main(["history", "--assets", "2", "--days", "0.1", "--seed", "3", "--period", "300",
                   "--out", str(tmp_path), "--no-progress"])
        assert rc == 0
        assert (tmp_path / "history.csv").read_text().count("\n") == 1 + 28 * 2 * 5
        assert (tmp_path / "events.csv").read_text() == "ts,asset,event\n"
        assert str(tmp_path / "history.csv") in capsys.readouterr().out

    def test_subprocess_matches_in_process(self, tmp_path: Path) -> None:
        """The installed vigil-sim binary writes the same Parquet-free CSV as main() does."""
        assert VIGIL_SIM.exists(), f"{VIGIL_SIM} not installed (pip install -e .)"
        args = ["history", "--assets", "2", "--days", "0.05", "--seed", "9", "--no-progress"]
        proc = subprocess.run([str(VIGIL_SIM), *args, "--out", str(tmp_path / "sub")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert main([*args, "--out", str(tmp_path / "inproc")]) == 0
        sub = (tmp_path / "sub" / "history.csv").read_bytes()
        assert sub == (tmp_path / "inproc" / "history.csv").read_bytes()

    def test_subprocess_bad_input_has_no_traceback(self) -> None:
        """A real process given bad input exits 2 with one stderr line and no traceback."""
        proc = subprocess.run([str(VIGIL_SIM), "replay", "/nonexistent.csv", "--broker",
                               "mqtt://127.0.0.1:9"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 2
        assert proc.stderr == "vigil-sim: error: /nonexistent.csv: no such file\n"
