"""How much history the recording holds (agent.history): per asset, from files the recorder wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from agent.config import RecordConfig
from agent.history import AssetHistory, HistoryIndex, _single_asset, recorded_history, summarise
from agent.metrics import Metrics
from agent.recorder import Recorder

CHANNELS = ("temp", "vib")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def record(directory: Path, messages: list[tuple[str, float]], wall: float) -> None:
    """Two-channel messages (asset, ts) through the agent's recorder, as one file."""
    rec = Recorder(RecordConfig(enabled=True), directory, CHANNELS, Metrics(CollectorRegistry()),
                   wall=lambda: wall)
    rec.start()
    for asset, ts in messages:
        rec.add(asset, ts, [0, 1], [20.0, 0.5])
    assert rec.close(timeout=10)


def truth(directory: Path) -> dict[str, AssetHistory]:
    """The same figures from every row of the recording, the slow way."""
    t = ds.dataset(directory, format="parquet").to_table(columns=["asset", "ts"])
    out: dict[str, AssetHistory] = {}
    for a, ts in zip(t["asset"].to_pylist(), t["ts"].to_pylist(), strict=True):
        got = AssetHistory(ts, ts, 1)
        out[a] = out[a].joined(got) if a in out else got
    return out


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A file of two assets (day one) and a file of one asset (day three), plus what readers skip."""
    d = tmp_path / "recording"
    record(d, [(a, T0 + 60 * k) for k in range(100) for a in ("pump-1", "pump-2")], T0)
    record(d, [("pump-1", T0 + 2 * 86400 + 60 * k) for k in range(50)], T0 + 2 * 86400)
    (d / "2026-01-01" / ".part-x.parquet.tmp").write_bytes(b"half a file")
    return d


def test_spans_and_readings_per_asset(recording: Path) -> None:
    """Each asset's first and last event time and its readings, as the rows say; temporary files
    are not read."""
    h = recorded_history(recording)
    assert h.files == 2 and h.unreadable == 0
    assert h.assets == truth(recording)
    assert h.assets["pump-1"] == AssetHistory(T0, T0 + 2 * 86400 + 60 * 49, 2 * 150)
    assert h.spans() == {"pump-1": 2 * 86400 + 60 * 49, "pump-2": 60 * 99}
    assert h.span_s == 2 * 86400 + 60 * 49 and h.readings == 2 * 250


def test_a_one_asset_file_is_summed_up_from_its_footer(recording: Path) -> None:
    """The footer's statistics give what reading the rows gives; a file of two assets is read."""
    [one] = list(recording.glob("2026-01-03/part-*.parquet"))
    [two] = list(recording.glob("2026-01-01/part-*.parquet"))
    assert _single_asset(pq.ParquetFile(one)) == summarise(one) == truth(one.parent)
    assert _single_asset(pq.ParquetFile(two)) is None and summarise(two) == truth(two.parent)


def test_the_index_follows_new_and_deleted_files(recording: Path) -> None:
    """A later scan adds the files written since and forgets those the disk bound deleted."""
    index = HistoryIndex(recording)
    assert index.scan().readings == 500
    record(recording, [("pump-3", T0 + 3 * 86400 + 60 * k) for k in range(10)], T0 + 3 * 86400)
    h = index.scan()
    assert h.files == 3 and h.assets["pump-3"] == AssetHistory(T0 + 3 * 86400, T0 + 3 * 86400 + 540, 20)
    for f in recording.glob("2026-01-01/part-*.parquet"):
        f.unlink()
    h = index.scan()
    assert set(h.assets) == {"pump-1", "pump-3"} and h.assets["pump-1"].readings == 100
    assert h.assets == truth(recording)


def test_bad_files_and_no_recording(recording: Path, tmp_path: Path) -> None:
    """A file that is not Parquet is counted and skipped; no folder yet is no history."""
    (recording / "2026-01-01" / "part-bad.parquet").write_bytes(b"not parquet")
    h = recorded_history(recording)
    assert h.unreadable == 1 and h.readings == 500
    empty = recorded_history(tmp_path / "nothing")
    assert empty.files == 0 and empty.span_s == 0.0 and empty.assets == {}


def test_asking_does_not_load_torch(recording: Path) -> None:
    """The agent asks while learning, before any model exists: no torch, no training code."""
    code = ("import sys; from pathlib import Path; from agent.history import recorded_history; "
            f"h = recorded_history(Path({str(recording)!r})); "
            "print(h.readings, 'torch' in sys.modules, 'training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["500", "False", "False"]
