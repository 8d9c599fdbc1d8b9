"""Reading long-format history files back: ts forms, validation errors that name the row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import DataError
from sim.history import write_history
from sim.plant import PlantConfig
from sim.reader import read_history


def write(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestReadHistory:
    def test_reads_what_write_history_wrote(self, tmp_path: Path) -> None:
        """Chunks of a written CSV and Parquet file hold every row with numbering from 1."""
        cfg = PlantConfig(n_assets=2, period_s=600.0, seed=1)
        csv_path, _ = write_history(cfg, 1, tmp_path / "c", progress=False)
        pq_path, _ = write_history(cfg, 1, tmp_path / "p", fmt="parquet", progress=False)
        for path in (csv_path, pq_path):
            chunks = list(read_history(path))
            assert chunks[0].first_row == 1
            assert sum(len(c) for c in chunks) == 144 * 2 * 5
            assert chunks[0].asset[0] == "pump-001" and chunks[0].channel[0] == "bearing_temp"

    def test_rfc3339_and_epoch_ts(self, tmp_path: Path) -> None:
        """RFC 3339 ts with Z or an offset become the same epoch seconds as numeric ts."""
        path = write(
            tmp_path,
            "ts,asset,channel,value\n"
            "2026-01-01T00:00:00Z,p1,t,1.5\n"
            "2026-01-01T01:00:00.500+01:00,p1,t,2\n",
        )
        (chunk,) = read_history(path)
        np.testing.assert_allclose(chunk.ts, [1_767_225_600.0, 1_767_225_600.5])
        np.testing.assert_allclose(chunk.value, [1.5, 2.0])

    def test_extra_columns_and_any_order(self, tmp_path: Path) -> None:
        """Columns may come in any order with extras; only the four named ones are read."""
        path = write(tmp_path, "value,unit,channel,asset,ts\n3.5,C,temp,p1,100\n")
        (chunk,) = read_history(path)
        assert (chunk.ts[0], chunk.asset, chunk.channel, chunk.value[0]) == (
            100.0, ["p1"], ["temp"], 3.5,
        )

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("ts,asset,value\n1,p1,2\n", "missing column(s) channel"),
            ("ts,asset,channel,value\n1,p1,t,2\n2,p1,t,\n", "row 2: empty value"),
            ("ts,asset,channel,value\n1,p1,t,2\nyesterday,p1,t,3\n", "row 2:"),
            ("ts,asset,channel,value\n1,p1,t,2\n2,p/1,t,3\n", "row 2: asset 'p/1'"),
            ("ts,asset,channel,value\n1,p1,t,nan\n", "row 1: value nan"),
            ("ts,asset,channel,value\n1,p1,t,abc\n", "abc"),
        ],
    )
    def test_malformed_input_names_the_problem(
        self, tmp_path: Path, text: str, message: str
    ) -> None:
        """Each malformed file raises DataError whose message says what and where."""
        path = write(tmp_path, text)
        with pytest.raises(DataError) as info:
            list(read_history(path))
        assert message in str(info.value)
        assert "\n" not in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist raises DataError on the first read."""
        with pytest.raises(DataError, match="no such file"):
            next(read_history(tmp_path / "nope.csv"))
