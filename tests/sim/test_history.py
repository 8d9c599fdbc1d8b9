"""History files: format, sorting, reproducibility, gaps while down, Parquet."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from agent.errors import ConfigError
from sim.history import read_events, write_history
from sim.plant import CHANNELS, DAY, FAILURE, HOUR, MAINTENANCE, PlantConfig
from sim.timestamps import DEFAULT_START_TS

SMALL = PlantConfig(n_assets=3, period_s=600.0, seed=4)
# Wears out within a day or so, so a few days hold failures and repairs.
FRAGILE = PlantConfig(
    n_assets=3, period_s=600.0, seed=5, onset_mean_s=0.5 * DAY, life_min_s=0.5 * DAY,
    life_max_s=1 * DAY, downtime_min_s=2 * HOUR, downtime_max_s=4 * HOUR,
)


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


class TestCsv:
    def test_header_and_row_format(self, tmp_path: Path) -> None:
        """history.csv has the ts,asset,channel,value header and integer ts, known names, floats."""
        history, events = write_history(SMALL, 1, tmp_path, progress=False)
        assert history == tmp_path / "history.csv" and events == tmp_path / "events.csv"
        lines = history.read_text().splitlines()
        assert lines[0] == "ts,asset,channel,value"
        assert events.read_text().splitlines()[0] == "ts,asset,event"
        body = rows(history)[1:]
        assert len(body) == 144 * 3 * len(CHANNELS)  # nobody fails in the first day here
        for ts, asset, channel, value in body:
            assert int(ts) >= DEFAULT_START_TS and ts == str(int(ts))
            assert asset in SMALL.asset_names and channel in CHANNELS
            float(value)

    def test_rows_are_sorted_by_ts_asset_channel(self, tmp_path: Path) -> None:
        """Rows run in ts order, then asset index, then CHANNELS order, with no duplicates."""
        history, _ = write_history(FRAGILE, 3, tmp_path, progress=False)
        keys = [
            (int(ts), FRAGILE.asset_names.index(asset), CHANNELS.index(channel))
            for ts, asset, channel, _ in rows(history)[1:]
        ]
        assert keys == sorted(set(keys))

    def test_same_seed_identical_files(self, tmp_path: Path) -> None:
        """Two runs with the same seed write byte-identical history and events files."""
        a = write_history(FRAGILE, 3, tmp_path / "a", progress=False)
        b = write_history(FRAGILE, 3, tmp_path / "b", progress=False)
        assert a[0].read_bytes() == b[0].read_bytes()
        assert a[1].read_bytes() == b[1].read_bytes()

    def test_different_seed_different_files(self, tmp_path: Path) -> None:
        """A different seed writes a different history."""
        a, _ = write_history(SMALL, 0.5, tmp_path / "a", progress=False)
        other = PlantConfig(n_assets=3, period_s=600.0, seed=SMALL.seed + 1)
        b, _ = write_history(other, 0.5, tmp_path / "b", progress=False)
        assert a.read_bytes() != b.read_bytes()

    def test_chunk_size_does_not_change_output(self, tmp_path: Path) -> None:
        """Writing in chunks of 7 steps gives the same bytes as the default chunking."""
        a, _ = write_history(FRAGILE, 2, tmp_path / "a", progress=False)
        b, _ = write_history(FRAGILE, 2, tmp_path / "b", progress=False, chunk_steps=7)
        assert a.read_bytes() == b.read_bytes()

    def test_no_readings_while_down(self, tmp_path: Path) -> None:
        """Between a failure and its maintenance event the asset has no rows."""
        history, events_path = write_history(FRAGILE, 4, tmp_path, progress=False)
        events = read_events(events_path)
        assert {e for _, _, e in events} == {FAILURE, MAINTENANCE}
        seen = {(int(ts), asset) for ts, asset, _, _ in rows(history)[1:]}
        for ts, asset, event in events:
            if event != FAILURE:
                continue
            back = min(t for t, a, e in events if a == asset and e == MAINTENANCE and t > ts)
            t = ts
            while t < back:
                assert (int(t), asset) not in seen
                t += FRAGILE.period_s
            assert (int(back), asset) in seen

    def test_fractional_period_writes_float_ts(self, tmp_path: Path) -> None:
        """A period that is not whole seconds keeps fractional ts instead of rounding them."""
        cfg = PlantConfig(n_assets=1, period_s=0.5, seed=1)
        history, _ = write_history(cfg, 10 / DAY, tmp_path, progress=False)
        ts = [float(r[0]) for r in rows(history)[1:]]
        assert ts[len(CHANNELS)] - ts[0] == 0.5


class TestParquet:
    def test_parquet_matches_csv(self, tmp_path: Path) -> None:
        """The Parquet history holds exactly the rows of the CSV history."""
        c, _ = write_history(FRAGILE, 2, tmp_path / "c", progress=False)
        p, _ = write_history(FRAGILE, 2, tmp_path / "p", fmt="parquet", progress=False)
        assert p.name == "history.parquet"
        from_parquet = pq.read_table(p)
        assert from_parquet.column_names == ["ts", "asset", "channel", "value"]
        assert from_parquet.equals(pacsv.read_csv(c).cast(from_parquet.schema))


class TestPartitioned:
    def test_by_asset_holds_each_assets_rows_in_order(self, tmp_path: Path) -> None:
        """One file per asset (asset=NAME/), the asset left to the folder name, rows as in one file."""
        one, _ = write_history(FRAGILE, 2, tmp_path / "one", fmt="parquet", progress=False)
        folder, _ = write_history(FRAGILE, 2, tmp_path / "p", fmt="parquet", progress=False,
                                  partition="asset", chunk_steps=50)
        assert folder == tmp_path / "p" / "history"
        whole = pq.read_table(one)
        for name in FRAGILE.asset_names:
            part = pq.read_table(folder / f"asset={name}" / "part-0.parquet")
            assert part.column_names == ["ts", "channel", "value"]
            mine = whole.filter(pc.equal(whole["asset"], name)).drop_columns(["asset"])
            assert part.equals(mine)

    def test_by_date_holds_each_utc_day(self, tmp_path: Path) -> None:
        """One file per UTC day (date=YYYY-MM-DD/), together the single file's rows in its order."""
        one, _ = write_history(FRAGILE, 3, tmp_path / "one", fmt="parquet", progress=False)
        folder, _ = write_history(FRAGILE, 3, tmp_path / "p", fmt="parquet", progress=False,
                                  partition="date", chunk_steps=100)
        days = sorted(d.name for d in folder.iterdir())
        assert len(days) >= 3 and days[0] == f"date={datetime.fromtimestamp(DEFAULT_START_TS, UTC).date()}"
        parts = [pq.read_table(folder / d / "part-0.parquet") for d in days]
        for d, t in zip(days, parts, strict=True):
            dates = {datetime.fromtimestamp(v, UTC).date().isoformat() for v in t["ts"].to_pylist()}
            assert dates == {d.removeprefix("date=")}
        assert pa.concat_tables(parts).equals(pq.read_table(one))

    def test_partition_needs_parquet_and_a_new_folder(self, tmp_path: Path) -> None:
        """CSV cannot be partitioned; an existing history folder is not written into."""
        with pytest.raises(ConfigError, match="--format parquet"):
            write_history(SMALL, 1, tmp_path, partition="asset", progress=False)
        (tmp_path / "history").mkdir()
        with pytest.raises(ConfigError, match="already exists"):
            write_history(SMALL, 1, tmp_path, fmt="parquet", partition="date", progress=False)


class TestValidation:
    @pytest.mark.parametrize("days", [0.0, -1.0, float("inf"), 1e-6])
    def test_rejects_bad_days(self, tmp_path: Path, days: float) -> None:
        """Zero, negative, infinite or sub-period durations raise ConfigError."""
        with pytest.raises(ConfigError):
            write_history(SMALL, days, tmp_path, progress=False)

    def test_rejects_unknown_format(self, tmp_path: Path) -> None:
        """An unknown format raises ConfigError rather than writing something else."""
        with pytest.raises(ConfigError):
            write_history(SMALL, 1, tmp_path, fmt="xlsx", progress=False)  # type: ignore[arg-type]
