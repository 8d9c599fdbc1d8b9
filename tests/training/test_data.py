"""History and events loaders on small files the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.errors import DataError
from training import readers
from training.data import infer_period, load_events, load_history


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class TestLoadHistory:
    def test_epoch_and_rfc3339_give_the_same_grid(self, tmp_path: Path) -> None:
        """Timestamps as epoch seconds and as RFC 3339 text resample identically."""
        a = write(tmp_path / "a.csv",
                  "ts,asset,channel,value\n0,p1,t,1.0\n60,p1,t,2.0\n0,p1,v,5\n60,p1,v,6\n")
        b = write(tmp_path / "b.csv", "ts,asset,channel,value\n1970-01-01T00:00:00Z,p1,t,1.0\n"
                  "1970-01-01T00:01:00+00:00,p1,t,2.0\n1970-01-01T00:00:00Z,p1,v,5\n1970-01-01T00:01:00Z,p1,v,6\n")
        ha, hb = load_history(a), load_history(b)
        assert ha.channels == hb.channels == ("t", "v")
        assert ha.period_s == hb.period_s == 60.0
        np.testing.assert_array_equal(ha.assets[0].grid, hb.assets[0].grid)
        np.testing.assert_array_equal(ha.assets[0].grid, [[1.0, 5.0], [2.0, 6.0]])

    def test_missing_cells_stay_nan_and_assets_are_separate(self, tmp_path: Path) -> None:
        """A cell without a reading is NaN; each asset gets its own series."""
        f = write(tmp_path / "h.csv", "ts,asset,channel,value\n0,p1,t,1\n120,p1,t,3\n0,p2,t,7\n60,p2,t,8\n")
        h = load_history(f, period_s=60)
        by = {s.asset: s for s in h.assets}
        assert np.isnan(by["p1"].grid[1, 0]) and by["p1"].grid[2, 0] == 3
        assert by["p2"].grid[:, 0].tolist() == [7, 8]

    def test_fractional_and_offset_timestamps(self, tmp_path: Path) -> None:
        """RFC 3339 with fractional seconds and offsets parses to the right instant."""
        f = write(tmp_path / "h.csv", "ts,asset,channel,value\n1970-01-01T00:00:00.500Z,p1,t,1\n"
                  "1970-01-01T02:01:00+02:00,p1,t,2\n")
        h = load_history(f, period_s=60)
        assert h.assets[0].start_cell == 0 and h.assets[0].grid[:, 0].tolist() == [1, 2]

    def test_channel_order_follows_request(self, tmp_path: Path) -> None:
        """Passing the model's channels orders the grid by them and drops other channels."""
        f = write(tmp_path / "h.csv", "ts,asset,channel,value\n0,p1,a,1\n0,p1,b,2\n0,p1,c,3\n60,p1,a,1\n")
        h = load_history(f, period_s=60, channels=("c", "a"))
        assert h.channels == ("c", "a")
        assert h.assets[0].grid[0].tolist() == [3, 1]

    @pytest.mark.parametrize(("body", "needle"), [
        ("ts,asset,value\n0,p1,1\n", "missing column"),
        ("ts,asset,channel,value\n0,p1,t,1\n60,p1,t,abc\n", "value"),
        ("ts,asset,channel,value\n0,p1,t,1\nyesterday,p1,t,2\n", "row 3, column ts"),
        ("ts,asset,channel,value\n0,p1,t,1\n60,p1,t,\n", "row 3, column value"),
        ("ts,asset,channel,value\n", "no rows"),
    ])
    def test_bad_files_name_the_problem(self, tmp_path: Path, body: str, needle: str) -> None:
        """A malformed file raises DataError naming the file and where the problem is."""
        f = write(tmp_path / "bad.csv", body)
        with pytest.raises(DataError) as exc:
            load_history(f)
        assert "bad.csv" in str(exc.value) and needle in str(exc.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a DataError, not a traceback from deep inside."""
        with pytest.raises(DataError, match="no such file"):
            load_history(tmp_path / "nope.csv")


class TestPeriodAndEvents:
    def test_infer_period_is_the_median_gap_within_series(self) -> None:
        """Gaps are measured within a series, never across series."""
        ts = np.array([0, 10, 20, 30, 5, 15, 25], dtype=float)
        keys = np.array([0, 0, 0, 0, 1, 1, 1])
        assert infer_period(ts, keys) == 10.0

    def test_events_loaded_and_bad_kind_rejected(self, tmp_path: Path) -> None:
        """Events parse; an unknown event kind names its row."""
        ok = write(tmp_path / "e.csv", "ts,asset,event\n100,p1,failure\n200,p1,maintenance\n")
        evs = load_events(ok)
        assert [(e.ts, e.asset, e.event) for e in evs] == [(100, "p1", "failure"), (200, "p1", "maintenance")]
        bad = write(tmp_path / "bad.csv", "ts,asset,event\n100,p1,failure\n200,p1,exploded\n")
        with pytest.raises(DataError, match="row 3, column event"):
            load_events(bad)


class TestWideFormat:
    def test_wide_csv_matches_long(self, tmp_path: Path) -> None:
        """A wide file (one column per channel) grids exactly like the same readings in long format."""
        long = write(tmp_path / "l.csv", "ts,asset,channel,value\n0,p1,t,1\n0,p1,v,5\n60,p1,t,2\n60,p1,v,6\n"
                     "0,p2,t,3\n0,p2,v,7\n")
        wide = write(tmp_path / "w.csv", "ts,asset,v,t\n0,p1,5,1\n60,p1,6,2\n0,p2,7,3\n")
        hl, hw = load_history(long), load_history(wide, fmt="wide")
        assert hw.channels == ("v", "t")  # header order
        hw = load_history(wide, fmt="wide", channels=("t", "v"))
        assert [s.asset for s in hl.assets] == [s.asset for s in hw.assets]
        for a, b in zip(hl.assets, hw.assets, strict=True):
            np.testing.assert_array_equal(a.grid, b.grid)

    def test_wide_empty_cell_is_a_missing_reading(self, tmp_path: Path) -> None:
        """An empty cell in a wide file is no reading (NaN on the grid), not an error."""
        f = write(tmp_path / "w.csv", "ts,asset,t,v\n0,p1,1,\n60,p1,2,6\n")
        g = load_history(f, fmt="wide").assets[0].grid
        assert np.isnan(g[0, 1]) and g.tolist()[1] == [2, 6]

    def test_wide_parquet(self, tmp_path: Path) -> None:
        """Wide Parquet files load with typed columns, nulls as missing readings."""
        f = tmp_path / "w.parquet"
        pq.write_table(pa.table({"ts": [0.0, 60.0], "asset": ["p1", "p1"], "t": [1.0, None],
                                 "v": [5.0, 6.0]}), f)
        g = load_history(f, fmt="wide").assets[0].grid
        assert g[0].tolist() == [1, 5] and np.isnan(g[1, 0]) and g[1, 1] == 6

    @pytest.mark.parametrize(("body", "needle"), [
        ("ts,asset,t\n0,p1,1\n60,p1,hot\n", "row 3, column t"),
        ("ts,asset\n0,p1\n", "no channel columns"),
        ("ts,t,v\n0,1,2\n", "missing column(s) ['asset']"),
        ("ts,asset,t\n0,p1,1\n,p1,2\n", "row 3, column ts"),
        ("ts,asset,t\n0,,1\n", "row 2, column asset"),
    ])
    def test_bad_wide_files_name_file_row_and_column(self, tmp_path: Path, body: str, needle: str) -> None:
        """A malformed wide file raises DataError naming the file and the row and column."""
        f = write(tmp_path / "badwide.csv", body)
        with pytest.raises(DataError) as exc:
            load_history(f, fmt="wide")
        assert "badwide.csv" in str(exc.value) and needle in str(exc.value)


class TestChunks:
    def test_csv_read_in_chunks_gives_the_same_grid(self, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """Reading a CSV in many small blocks gives the same history as one block."""
        rows = "".join(f"{60 * i},p{i % 3},t,{i}\n{60 * i},p{i % 3},v,{-i}\n" for i in range(300))
        f = write(tmp_path / "h.csv", "ts,asset,channel,value\n" + rows)
        whole = load_history(f, period_s=60)
        monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", 256)
        chunks = list(readers.read_chunks(f, ["ts", "asset", "channel", "value"]))
        assert len(chunks) > 10 and chunks[1].row0 == 2 + chunks[0].table.num_rows
        parts = load_history(f, period_s=60)
        for a, b in zip(whole.assets, parts.assets, strict=True):
            np.testing.assert_array_equal(a.grid, b.grid)

    def test_error_in_a_later_chunk_names_its_row(self, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad value deep in the file is reported with its own row number, whatever the chunking."""
        rows = [f"{60 * i},p1,t,{i}\n" for i in range(200)]
        rows[150] = "9000,p1,t,oops\n"
        f = write(tmp_path / "h.csv", "ts,asset,channel,value\n" + "".join(rows))
        monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", 200)
        with pytest.raises(DataError, match=r"h\.csv: row 152, column value"):
            load_history(f)

    def test_parquet_long_in_batches(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Long-format Parquet is read batch by batch with the same result."""
        n = 50
        table = pa.table({"ts": [60.0 * (i // 2) for i in range(2 * n)], "asset": ["p1"] * (2 * n),
                          "channel": ["t", "v"] * n, "value": [float(i) for i in range(2 * n)]})
        f = tmp_path / "h.parquet"
        pq.write_table(table, f)
        whole = load_history(f)
        monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 7)
        assert len(list(readers.read_chunks(f, ["ts"]))) == 15
        np.testing.assert_array_equal(load_history(f).assets[0].grid, whole.assets[0].grid)


GOOD = pa.table({"ts": [0, 60], "asset": ["p1"] * 2, "channel": ["t"] * 2, "value": [1.0, 2.0]})


class TestFolders:
    @pytest.mark.parametrize("layout", ["plain", "asset", "date"])
    def test_folder_grids_like_the_single_file(self, layouts: dict[str, tuple[Path, Path]],
                                               layout: str) -> None:
        """A folder of Parquet files (plain, or partitioned by asset or date) grids like one file."""
        ref, got = load_history(layouts["file"][0]), load_history(layouts[layout][0])
        assert got.channels == ref.channels and got.period_s == ref.period_s
        assert [s.asset for s in got.assets] == [s.asset for s in ref.assets]
        for a, b in zip(ref.assets, got.assets, strict=True):
            assert a.start_cell == b.start_cell
            np.testing.assert_array_equal(a.grid, b.grid)

    def test_partition_value_is_text_and_file_column_wins(self, tmp_path: Path) -> None:
        """`asset=007` names asset "007" (not 7); files may also carry the column themselves."""
        (tmp_path / "asset=007").mkdir()
        pq.write_table(pa.table({"ts": [0, 60], "channel": ["t", "t"], "value": [1.0, 2.0]}),
                       tmp_path / "asset=007" / "a.parquet")
        (tmp_path / "asset=x").mkdir()
        pq.write_table(pa.table({"ts": [0], "asset": ["p9"], "channel": ["t"], "value": [3.0]}),
                       tmp_path / "asset=x" / "b.parquet")
        h = load_history(tmp_path, period_s=60)
        assert [s.asset for s in h.assets] == ["007", "p9"]

    def test_hidden_and_other_files_are_left_out(self, tmp_path: Path) -> None:
        """Files being written (`.x`, `_x`) and non-Parquet files are not read."""
        pq.write_table(GOOD, tmp_path / "a.parquet")
        for name in (".part.parquet", "_tmp.parquet", "notes.txt"):
            (tmp_path / name).write_bytes(b"not parquet")
        assert load_history(tmp_path).assets[0].grid[:, 0].tolist() == [1, 2]

    @pytest.mark.parametrize(("second", "needle"), [
        (b"PAR1 truncated", "b.parquet"),
        (pa.table({"ts": [120], "asset": ["p1"], "channel": ["t"]}),
         "b.parquet: missing column(s) ['value']"),
        (pa.table({"ts": [120], "asset": ["p1"], "channel": ["t"], "value": ["hot"]}),
         "b.parquet: row 1, column value"),
    ])
    def test_a_bad_file_in_a_folder_is_named(self, tmp_path: Path, second: bytes | pa.Table,
                                             needle: str) -> None:
        """A corrupt or wrong-schema file among good ones stops the load with that file's name."""
        pq.write_table(GOOD, tmp_path / "a.parquet")
        if isinstance(second, bytes):
            (tmp_path / "b.parquet").write_bytes(second)
        else:
            pq.write_table(second, tmp_path / "b.parquet")
        with pytest.raises(DataError) as exc:
            load_history(tmp_path)
        assert needle in str(exc.value)

    def test_wide_folder_files_must_agree_on_channels(self, tmp_path: Path) -> None:
        """A wide file with a channel the first file lacks is an error, not data silently dropped."""
        pq.write_table(pa.table({"ts": [0.0], "asset": ["p1"], "t": [1.0]}), tmp_path / "a.parquet")
        pq.write_table(pa.table({"ts": [60.0], "asset": ["p1"], "t": [2.0], "v": [3.0]}),
                       tmp_path / "b.parquet")
        with pytest.raises(DataError, match=r"b\.parquet: column\(s\) \['v'\] not in the other files"):
            load_history(tmp_path, fmt="wide")

    def test_empty_folder(self, tmp_path: Path) -> None:
        """A folder without Parquet files says so."""
        with pytest.raises(DataError, match="no Parquet files"):
            load_history(tmp_path)
