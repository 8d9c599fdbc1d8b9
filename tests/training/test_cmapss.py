"""The C-MAPSS loader on tiny files the tests write: units, cycles, failures, RUL files, bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import DataError
from training.cmapss import CHANNELS, DEFAULT_CHANNELS, load_cmapss


def cmapss_rows(lives: dict[int, int], seed: int = 0) -> str:
    """Rows `unit cycle op1 op2 op3 s1..s21` with two trailing spaces, as NASA writes them."""
    rng = np.random.default_rng(seed)
    lines = []
    for unit, life in lives.items():
        for cycle in range(1, life + 1):
            values = np.round(rng.normal(size=24) + np.arange(24), 4)
            lines.append(" ".join([str(unit), str(cycle), *(f"{v:g}" for v in values)]) + "  ")
    return "\n".join(lines) + "\n"


class TestLoadCmapss:
    def test_units_are_assets_and_fail_at_their_last_cycle(self, tmp_path: Path) -> None:
        """A training file: one asset per unit, one cell per cycle, a failure at each unit's last cycle."""
        f = tmp_path / "train_FD009.txt"
        f.write_text(cmapss_rows({1: 5, 2: 3}))
        data = load_cmapss(f)
        h = data.history
        assert h.channels == CHANNELS and h.period_s == 1.0
        assert [s.asset for s in h.assets] == ["unit_001", "unit_002"]
        assert [s.grid.shape for s in h.assets] == [(5, 24), (3, 24)]
        assert all(s.start_cell == 1 for s in h.assets)
        assert [(e.asset, e.ts, e.event) for e in data.events] == [
            ("unit_001", 5.0, "failure"), ("unit_002", 3.0, "failure")]
        assert data.truth is None

    def test_values_land_in_their_columns(self, tmp_path: Path) -> None:
        """Column k of a row is channel k, and channel selection keeps the requested order."""
        f = tmp_path / "train_FD009.txt"
        f.write_text("1 1 " + " ".join(str(v) for v in range(24)) + "  \n1 2 " + " ".join("1" * 24) + "\n")
        h = load_cmapss(f, channels=("sensor_2", "op_setting_1")).history
        assert h.channels == ("sensor_2", "op_setting_1")
        assert h.assets[0].grid[0].tolist() == [4.0, 0.0]
        # The cycle counter is a channel too (the engine's age), in the order asked for.
        aged = load_cmapss(f, channels=("sensor_2", "cycle")).history
        assert [row.tolist() for row in aged.assets[0].grid] == [[4.0, 1.0], [1.0, 2.0]]
        assert len(DEFAULT_CHANNELS) == 18 and DEFAULT_CHANNELS[-1] == "cycle"
        with pytest.raises(DataError, match=r"'unit'.* not C-MAPSS columns"):
            load_cmapss(f, channels=("unit",))

    def test_test_file_fails_after_its_rul(self, tmp_path: Path) -> None:
        """A test unit fails RUL cycles after its last observed cycle; the RUL file is found beside it."""
        f = tmp_path / "test_FD009.txt"
        f.write_text(cmapss_rows({1: 4, 2: 6}))
        (tmp_path / "RUL_FD009.txt").write_text("10 \n3 \n")
        data = load_cmapss(f)
        assert data.truth == {"unit_001": 10.0, "unit_002": 3.0}
        assert [(e.asset, e.ts) for e in data.events] == [("unit_001", 14.0), ("unit_002", 9.0)]

    def test_test_file_without_rul_file_is_refused(self, tmp_path: Path) -> None:
        """A test file without its RUL file is an error, not a silent run-to-failure assumption."""
        f = tmp_path / "test_FD009.txt"
        f.write_text(cmapss_rows({1: 4}))
        with pytest.raises(DataError, match=r"RUL_FD009\.txt"):
            load_cmapss(f)

    @pytest.mark.parametrize(("text", "needle"), [
        ("1 1 " + " ".join(["0"] * 24) + "\n1 2 " + " ".join(["0"] * 23) + "\n", "row 2: 25 columns"),
        ("1 1 " + " ".join(["0"] * 24) + "\n1 2 " + " ".join(["0"] * 5 + ["x"] + ["0"] * 18) + "\n",
         "row 2, column sensor_3"),
        ("1 1 " + " ".join(["0"] * 24) + "\n1 3 " + " ".join(["0"] * 24) + "\n", "row 2, column cycle"),
        ("", "no rows"),
    ])
    def test_bad_rows_name_file_row_and_column(self, tmp_path: Path, text: str, needle: str) -> None:
        """A malformed C-MAPSS file raises DataError naming the file, the row and the column."""
        f = tmp_path / "train_bad.txt"
        f.write_text(text)
        with pytest.raises(DataError) as exc:
            load_cmapss(f)
        assert "train_bad.txt" in str(exc.value) and needle in str(exc.value)

    def test_rul_file_must_match_units(self, tmp_path: Path) -> None:
        """An RUL file with the wrong number of rows is refused."""
        f = tmp_path / "test_FD009.txt"
        f.write_text(cmapss_rows({1: 4, 2: 4}))
        (tmp_path / "RUL_FD009.txt").write_text("10\n")
        with pytest.raises(DataError, match=r"1 RUL rows for units 1\.\.2"):
            load_cmapss(f)
