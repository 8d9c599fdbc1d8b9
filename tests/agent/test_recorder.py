"""Recording for retraining: rotation, the disk bound, whole files, drops, and exactly what was accepted."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, RecordConfig
from agent.errors import ConfigError
from agent.ingest import Reading
from agent.metrics import Metrics
from agent.pipeline import Pipeline
from agent.recorder import Recorder
from agent.runtime import load_model
from agent.sparkplug.codec import encode, new_metric
from agent.sparkplug.sparkplug_b_pb2 import DataType
from agent.windows import AssetWindow
from tests.agent.conftest import CHANNELS, ModelFile
from tests.broker import wait_until
from tests.perf.test_hotpath import WALL, PerReading, _config, _encode, message
from tests.sparkplug.helpers import dbirth, ddata, nbirth
from tests.sparkplug.test_agent import T0_MS, send
from tests.sparkplug.test_agent import pipeline as sparkplug_pipeline

Row = tuple[float, str, str, float]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(directory: Path, clock: Clock | None = None, **cfg: Any) -> tuple[Recorder, Metrics]:
    metrics = Metrics(CollectorRegistry())
    rec = Recorder(RecordConfig(enabled=True, **cfg), directory, CHANNELS, metrics, wall=clock or Clock())
    return rec, metrics


def files(directory: Path) -> list[Path]:
    """The recording's files, oldest first (by name, as the recorder orders them)."""
    return sorted(directory.glob("*/part-*.parquet"), key=lambda p: p.relative_to(directory).as_posix())


def rows(directory: Path) -> list[Row]:
    """Every recorded reading, in file order then row order."""
    out: list[Row] = []
    for path in files(directory):
        t = pq.read_table(path)
        out += zip(*(t[c].to_pylist() for c in ("ts", "asset", "channel", "value")), strict=True)
    return out


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def add_readings(rec: Recorder, n: int, start: int = 0, paced: bool = True) -> list[Row]:
    """`n` one-reading messages; returns the rows they should become.

    `paced`: after each sealed buffer, wait until the writer has taken it, as a real stream's
    pace allows (a test adds files' worth of readings in microseconds).
    """
    out = []
    for k in range(start, start + n):
        asset, ch, value = f"pump-{k % 3}", k % len(CHANNELS), k * 0.5 + 0.1
        rec.add(asset, T0 + k, [ch], [value])
        out.append((T0 + k, asset, CHANNELS[ch], value))
        if paced:
            wait_until(lambda: rec.pending == 0, 10, what="the writer taking a buffer")
    return out


class TestRotation:
    def test_files_of_file_rows_readings_and_close_flushes_the_rest(self, tmp_path: Path) -> None:
        """A buffer is sealed at `file_rows` readings; close writes the partial last one; every
        reading lands once, in order, with its exact ts and value."""
        rec, m = recorder(tmp_path, file_rows=10)
        rec.start()
        want = add_readings(rec, 35)
        assert rec.close(timeout=10)
        assert [pq.read_metadata(p).num_rows for p in files(tmp_path)] == [10, 10, 10, 5]
        assert rows(tmp_path) == want
        assert sample(m, "vigil_record_readings_total") == 35
        assert sample(m, "vigil_record_files") == 4

    def test_a_message_is_never_split_across_files(self, tmp_path: Path) -> None:
        """The readings of one message stay together: a file may pass file_rows by the rest of one."""
        rec, _ = recorder(tmp_path, file_rows=4)
        rec.start()
        for k in range(3):
            rec.add("pump-1", T0 + k, [0, 1, 2], [1.0, 2.0, 3.0])
        assert rec.close(timeout=10)
        assert [pq.read_metadata(p).num_rows for p in files(tmp_path)] == [6, 3]

    def test_a_buffer_is_sealed_rotate_s_after_its_first_reading(self, tmp_path: Path) -> None:
        """`tick` seals the buffer once it is rotate_s old; the age of an empty buffer starts
        with its first reading, not with the last file."""
        clock = Clock()
        rec, m = recorder(tmp_path, clock, rotate_s=60, file_rows=1000)
        rec.start()
        clock.now += 600
        rec.tick()  # empty for ten minutes: nothing to write, and the age starts over
        add_readings(rec, 2)
        clock.now += 59
        rec.tick()
        assert rec._buf.rows == 2
        clock.now += 1
        rec.tick()
        wait_until(lambda: len(files(tmp_path)) == 1, 10, what="a rotated file")
        add_readings(rec, 1, start=2)
        assert rec.close(timeout=10)
        assert len(files(tmp_path)) == 2 and sample(m, "vigil_record_readings_total") == 3

    def test_layout_is_one_dataset_by_day(self, tmp_path: Path) -> None:
        """Files go into a folder per UTC day and pyarrow.dataset reads the folder as one
        long-format history with the training columns."""
        clock = Clock(T0 - 1)  # 2025-12-31T23:59:59Z
        rec, _ = recorder(tmp_path, clock, file_rows=2)
        rec.start()
        want = add_readings(rec, 2)
        clock.now = T0 + 1
        rec.tick()
        want += add_readings(rec, 2, start=2)
        assert rec.close(timeout=10)
        assert [p.parent.name for p in files(tmp_path)] == ["2025-12-31", "2026-01-01"]
        table = ds.dataset(tmp_path, format="parquet").to_table()
        assert table.column_names == ["ts", "asset", "channel", "value"]
        assert [str(t) for t in table.schema.types] == ["double", "string", "string", "double"]
        assert sorted(zip(*(table[c].to_pylist() for c in table.column_names), strict=True)) == sorted(want)

    def test_a_new_model_s_channels_start_a_new_file(self, tmp_path: Path) -> None:
        """After a hot-swap to other channels, readings buffered before it keep the old names."""
        rec, _ = recorder(tmp_path, file_rows=100)
        rec.start()
        rec.add("pump-1", T0, [0, 1], [1.0, 2.0])
        rec.set_channels(("flow", "temp"))
        rec.add("pump-1", T0 + 10, [0, 1], [3.0, 4.0])
        assert rec.close(timeout=10)
        assert rows(tmp_path) == [(T0, "pump-1", "temp", 1.0), (T0, "pump-1", "vib", 2.0),
                                  (T0 + 10, "pump-1", "flow", 3.0), (T0 + 10, "pump-1", "temp", 4.0)]


class TestDiskBound:
    def test_oldest_files_go_first_and_the_total_stays_within_the_bound(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest files are deleted (counted, logged); what stays is the newest
        files and never more than the bound."""
        probe, _ = recorder(tmp_path / "probe", file_rows=20)
        probe.start()
        add_readings(probe, 20)
        probe.close(timeout=10)
        size = files(tmp_path / "probe")[0].stat().st_size
        bound = int(size * 3.5)
        rec, m = recorder(tmp_path / "rec", file_rows=20, max_bytes=bound)
        rec.start()
        with structlog.testing.capture_logs() as logs:
            for k in range(10):
                add_readings(rec, 20, start=k * 20)  # one file's worth each
                wait_until(lambda k=k: sample(m, "vigil_record_readings_total") == 20 * (k + 1), 10,
                           what=f"file {k + 1}")
                total = sum(p.stat().st_size for p in files(tmp_path / "rec"))
                assert total <= bound and sample(m, "vigil_record_disk_bytes") == total
            assert rec.close(timeout=10)
        kept = files(tmp_path / "rec")
        assert len(kept) == 3
        assert [r[0] for r in rows(tmp_path / "rec")] == [T0 + k for k in range(140, 200)]  # the newest
        assert sample(m, "vigil_record_files_deleted_total") == 7
        deleted = [e for e in logs if e["event"] == "recording_files_deleted"]
        assert sum(e["files"] for e in deleted) == 7 and all(e["kept_bytes"] <= bound for e in deleted)

    def test_a_restart_counts_the_files_already_there(self, tmp_path: Path) -> None:
        """A new recorder on an old folder counts what is there and keeps the bound from the start."""
        first, _ = recorder(tmp_path, file_rows=10)
        first.start()
        add_readings(first, 40)
        first.close(timeout=10)
        sizes = [p.stat().st_size for p in files(tmp_path)]
        again, m = recorder(tmp_path, file_rows=10, max_bytes=sum(sizes[-2:]))
        again.start()
        assert again.close(timeout=10)
        assert [r[0] for r in rows(tmp_path)] == [T0 + k for k in range(20, 40)]
        assert sample(m, "vigil_record_files_deleted_total") == 2
        assert sample(m, "vigil_record_disk_bytes") == sum(sizes[-2:])


class TestWholeFiles:
    def test_readers_never_see_a_partial_file(self, tmp_path: Path) -> None:
        """A reader listing and reading the folder while files are written only ever finds whole
        Parquet files (each is written under a hidden name, then renamed)."""
        rec, _ = recorder(tmp_path, file_rows=2000)
        rec.start()
        stop = threading.Event()
        seen: set[Path] = set()
        errors: list[str] = []

        def read_all() -> None:
            while not stop.is_set():
                for path in files(tmp_path):
                    try:
                        assert pq.read_table(path).num_rows == 2000
                        seen.add(path)
                    except Exception as exc:  # the test's point: no read may fail
                        errors.append(f"{path.name}: {exc}")

        reader = threading.Thread(target=read_all)
        reader.start()
        try:
            for k in range(30):
                for j in range(2000):
                    rec.add("pump-1", T0 + k * 2000 + j, [0], [float(j)])
                wait_until(lambda k=k: len(files(tmp_path)) == k + 1, 10, what=f"file {k + 1}")
        finally:
            stop.set()
            reader.join()
        assert rec.close(timeout=10)
        assert errors == [] and len(seen) >= 10

    def test_a_crash_s_temporary_file_is_ignored_then_removed(self, tmp_path: Path) -> None:
        """Half a file left by a crash (a hidden temporary name) is skipped by pyarrow.dataset,
        and the next start removes it."""
        rec, _ = recorder(tmp_path, file_rows=5)
        rec.start()
        want = add_readings(rec, 5)
        rec.close(timeout=10)
        partial = files(tmp_path)[0].with_name(".part-20260101T000000.000000Z-000009.parquet.tmp")
        partial.write_bytes(b"PAR1 half a file")
        assert sorted(zip(*ds.dataset(tmp_path, format="parquet").to_table().to_pydict().values(),
                          strict=True)) == sorted(want)
        again, _ = recorder(tmp_path)
        again.start()
        again.close(timeout=10)
        assert not partial.exists() and rows(tmp_path) == want


class TestNeverBlocks:
    def test_a_writer_behind_drops_whole_buffers_and_counts_them(self, tmp_path: Path) -> None:
        """With the writer not keeping up (here: not started), sealed buffers wait in a queue of
        two; the next is dropped and counted instead of blocking ingest; the rest is written."""
        rec, m = recorder(tmp_path, file_rows=5)
        with structlog.testing.capture_logs() as logs:
            add_readings(rec, 20, paced=False)  # four buffers sealed: two queued, two dropped
        assert sample(m, "vigil_record_dropped_total", reason="queue_full") == 10
        assert [e["readings"] for e in logs if e["event"] == "recording_dropped"] == [5]  # rate-limited
        rec.start()
        assert rec.close(timeout=10)
        assert [r[0] for r in rows(tmp_path)] == [T0 + k for k in range(10)]

    def test_a_write_that_fails_is_counted_and_the_next_one_succeeds(self, tmp_path: Path) -> None:
        """A file that cannot be written (its day's folder is blocked by a file) costs its
        readings, counted as write_error and logged; the recorder keeps going."""
        clock = Clock()
        rec, m = recorder(tmp_path, clock, file_rows=5)
        blocker = tmp_path / datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%d")
        blocker.write_text("not a folder")
        rec.start()
        with structlog.testing.capture_logs() as logs:
            add_readings(rec, 5)
            wait_until(lambda: sample(m, "vigil_record_dropped_total", reason="write_error") == 5, 10,
                       what="write_error counted")
        assert any(e["event"] == "recording_write_failed" for e in logs)
        blocker.unlink()
        want = add_readings(rec, 5, start=5)
        assert rec.close(timeout=10)
        assert rows(tmp_path) == want

    def test_an_unusable_dir_is_a_config_error(self, tmp_path: Path) -> None:
        """A record dir that cannot be made stops start-up with a reason naming the key."""
        (tmp_path / "file").write_text("")
        with pytest.raises(ConfigError, match=r"record\.dir"):
            recorder(tmp_path / "file" / "rec")


class TestRejectedPositions:
    @given(cells=st.lists(st.tuples(st.integers(0, 30), st.lists(st.integers(0, 2), max_size=5),
                                    st.sampled_from([0.0, 0.25, 0.5])), max_size=30),
           aggregation=st.sampled_from(["last", "mean"]))
    def test_update_cell_names_the_readings_it_rejected(self, cells: list[Any], aggregation: str) -> None:
        """`rejected_at` holds the positions of exactly the readings `update` would reject."""
        a = AssetWindow(3, 4, max_gap=1, lateness=2, agg=aggregation)  # type: ignore[arg-type]
        b = AssetWindow(3, 4, max_gap=1, lateness=2, agg=aggregation)  # type: ignore[arg-type]
        for k, chans, frac in cells:
            ts = T0 + (k + frac) * 10.0
            vals = [float(i + k) for i in range(len(chans))]
            at: list[int] = []
            a.update_cell(k, ts, chans, vals, [], at)
            outcomes = [b.update(k, c, ts, v) for c, v in zip(chans, vals, strict=True)]
            assert at == [i for i, o in enumerate(outcomes) if o]


class Accepted(PerReading):
    """The plain per-reading path, keeping every reading its window took."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.taken: list[Row] = []

    def _write(self, r: Reading, wall: float, mono: float, historical: bool = False) -> Any:
        reason = super()._write(r, wall, mono, historical)
        if reason is None:
            self.taken.append((r.ts, r.asset, self.spec.channels[r.channel], r.value))
        return reason


_runs = itertools.count()


class TestRecordsWhatWasAccepted:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(msgs=st.lists(message, max_size=40), aggregation=st.sampled_from(["last", "mean"]))
    def test_recording_is_the_accepted_readings(self, tmp_path: Path, model_file: ModelFile,
                                                msgs: list[Any], aggregation: str) -> None:
        """Through the hot path, the recording holds exactly the readings the windows took, in
        order, with exact ts and values (after scale and channel map): no rejected reading
        (late, duplicate - also one of several in a message -, future, bad type...)."""
        cfg: AgentConfig = _config(tmp_path, model_file.path, aggregation)
        rt = load_model(model_file.path)
        fast = Pipeline(cfg, rt, Metrics(CollectorRegistry()), wall=lambda: WALL)
        plain = Accepted(cfg, rt, Metrics(CollectorRegistry()), wall=lambda: WALL)
        out = tmp_path / f"rec-{next(_runs)}"
        fast.recorder = Recorder(RecordConfig(enabled=True), out, rt.spec.channels, fast.metrics)
        accepted = 0
        for msg in msgs:
            sub, topic, payload = _encode(msg)
            accepted += fast.ingest(sub, topic, payload, WALL, 1.0)[0]
            plain.ingest(sub, topic, payload, WALL, 1.0)
        assert fast.recorder.close(timeout=10)
        assert rows(out) == plain.taken and len(plain.taken) == accepted


class TestSparkplugRecorded:
    def test_sparkplug_readings_are_recorded_as_accepted(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Readings from Sparkplug births and data are recorded under the model's channel names at
        their metric times; a metric the host refuses (unknown alias) is not."""
        pipe, _, _ = sparkplug_pipeline(tmp_path, model_file.path)
        rec = pipe.recorder = Recorder(RecordConfig(enabled=True), tmp_path / "rec", pipe.spec.channels,
                                       pipe.metrics)
        send(pipe, "NBIRTH", nbirth(), None)
        assert send(pipe, "DBIRTH", dbirth(1, ts_ms=T0_MS)) == (3, [])
        assert send(pipe, "DDATA", ddata(2, {1: 5.5, 3: 7.25}, ts_ms=T0_MS + 10_000)) == (2, [])
        unknown = encode([new_metric(DataType.Double, 1.0, alias=99, ts_ms=T0_MS + 20_000)], T0_MS, 3)
        assert send(pipe, "DDATA", unknown)[0] == 0
        assert rec.close(timeout=10)
        t = T0_MS / 1000
        assert rows(tmp_path / "rec") == [(t, "pump-1", "temp", 1.0), (t, "pump-1", "vib", 2.0),
                                          (t, "pump-1", "press", 3.0), (t + 10, "pump-1", "temp", 5.5),
                                          (t + 10, "pump-1", "press", 7.25)]
