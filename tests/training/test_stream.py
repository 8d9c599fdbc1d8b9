"""The streaming loader: the windows, labels and normalisation of the in-memory loader, in bounded memory."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import DataError
from agent.runtime import load_model
from agent.spec import Normalisation
from sim.plant import CHANNELS
from training import cli, readers
from training.data import Coded, infer_period, load_events, load_history
from training.fit import FitOptions, streamed
from training.labels import build_windows, fit_normalisation, input_quantiles
from training.source import MemorySource
from training.split import split_by_asset
from training.stream import (
    GridCache,
    StreamSource,
    Windowing,
    _median_gap,
    _Spill,
    build_cache,
    events_by_asset,
    fit_statistics,
    pick_assets,
)

WINDOWING = Windowing(window=12, horizon=3, fail_horizon=36, max_gap=2)
SPEED = tuple(sorted(CHANNELS)).index("speed")


def sources(history: Path, events_path: Path, work: Path, budget: int, regimes: bool
            ) -> tuple[MemorySource, Normalisation, StreamSource, GridCache]:
    """The training assets' windows, loaded in memory from the history and streamed through a cache,
    each with the normalisation fitted its way."""
    events = load_events(events_path)
    ws = build_windows(load_history(history), events, **asdict(WINDOWING))
    split = split_by_asset(ws.assets, {e.asset for e in events if e.event == "failure"}, 0.4, seed=1)
    train = tuple(sorted(split.train))
    regime = dict(regime_channels=(SPEED,), n_regimes=2) if regimes else {}
    norm = fit_normalisation(ws.subset(split.mask(ws, "train")), **regime)  # type: ignore[arg-type]
    memory = MemorySource.of(ws.subset(split.mask(ws, "train")).inputs(norm), train)
    cache = build_cache(history, work, budget=budget)
    stats = fit_statistics(cache, train, events, WINDOWING, **regime)  # type: ignore[arg-type]
    assert stats.quantiles == input_quantiles(memory.data.ws)
    return memory, norm, StreamSource(cache, train, events_by_asset(events), WINDOWING, stats.norm), cache


class TestSameWindows:
    @pytest.mark.parametrize(("layout", "regimes"), [("file", False), ("asset", True), ("date", False),
                                                     ("plain", False)])
    def test_streamed_windows_equal_in_memory(self, layouts: dict[str, tuple[Path, Path]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, layout: str, regimes: bool
                                              ) -> None:
        """Per asset and all together: the same cells, labels and normalisation (within 1e-6)."""
        history, events = layouts[layout]
        monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 600)  # many batches, several spills
        memory, norm, stream, cache = sources(history, events, tmp_path / "w", budget=2000, regimes=regimes)
        assert cache.stats.spills > 3 and cache.stats.peak_buffer <= 2000
        assert memory.assets == stream.assets and len(stream.assets) >= 2
        m_norm, s_norm = asdict(norm), asdict(stream.norm)
        assert (len(m_norm["regime_centres"]) == 2) == regimes
        for key, value in m_norm.items():
            np.testing.assert_allclose(np.asarray(s_norm[key], dtype=float), np.asarray(value, dtype=float),
                                       rtol=1e-6, err_msg=key)
        groups = [[i] for i in range(len(stream.assets))] + [list(range(len(stream.assets)))]
        for group in groups:
            m, s = memory.windows_of(group), stream.windows_of(group)
            assert len(m.ws) == len(s.ws) > 0
            every = np.arange(len(m.ws))
            np.testing.assert_array_equal(s.ws.cells[s.ws.rows(every)], m.ws.cells[m.ws.rows(every)])
            for label in ("end_cell", "fail", "has_target", "rul", "observed"):
                np.testing.assert_array_equal(getattr(s.ws, label), getattr(m.ws, label), err_msg=label)
            names = np.array(s.ws.assets)[s.ws.asset], np.array(m.ws.assets)[m.ws.asset]
            np.testing.assert_array_equal(*names)
            np.testing.assert_allclose(s.x(every), m.x(every), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(s.y(every), m.y(every), rtol=1e-5, atol=1e-5)

    def test_progress_names_both_passes(self, layouts: dict[str, tuple[Path, Path]], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """With progress on, stderr shows the reading pass and the gridding pass; off, nothing."""
        build_cache(layouts["asset"][0], tmp_path / "quiet", budget=500)
        assert capsys.readouterr().err == ""
        build_cache(layouts["asset"][0], tmp_path / "w", budget=500, progress=True)
        err = capsys.readouterr().err
        assert "reading history" in err and "gridding assets" in err

    def test_cache_grids_like_load_history_and_reopens(self, layouts: dict[str, tuple[Path, Path]],
                                                      tmp_path: Path) -> None:
        """The cache holds load_history's grids, period and fingerprint; another process can open it."""
        history = layouts["asset"][0]
        ref = load_history(history)
        cache = build_cache(history, tmp_path / "w", budget=500)
        again = GridCache.open(tmp_path / "w")
        assert again == cache
        got = again.history(again.names)
        assert (got.channels, got.period_s, got.fingerprint) == (ref.channels, ref.period_s, ref.fingerprint)
        for a, b in zip(ref.assets, got.assets, strict=True):
            assert (a.asset, a.start_cell) == (b.asset, b.start_cell)
            np.testing.assert_array_equal(a.grid, b.grid)
        assert not (tmp_path / "w" / "segments").exists()  # spilled readings are gone once gridded

    def test_channels_asked_for_and_wide_format(self, tmp_path: Path) -> None:
        """A wide folder with a channel subset streams to the grid load_history gives."""
        for k, asset in enumerate(("p1", "p2")):
            folder = tmp_path / "h" / f"asset={asset}"
            folder.mkdir(parents=True)
            pq.write_table(pa.table({"ts": np.arange(40) * 60.0, "a": np.arange(40.0) + k,
                                     "b": np.where(np.arange(40) % 7 == 0, np.nan, 1.0), "c": np.ones(40)}),
                           folder / "x.parquet")
        ref = load_history(tmp_path / "h", fmt="wide", channels=("b", "a"))
        cache = build_cache(tmp_path / "h", tmp_path / "w", fmt="wide", channels=("b", "a"), budget=30)
        assert cache.channels == ("b", "a") and cache.period_s == ref.period_s == 60
        for a, b in zip(ref.assets, cache.history(cache.names).assets, strict=True):
            np.testing.assert_array_equal(a.grid, b.grid)


class TestBoundedMemory:
    def test_buffer_never_passes_the_budget(self, layouts: dict[str, tuple[Path, Path]], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """Pass 1 never holds more readings than the budget, whatever the batch size; a batch larger
        than the budget goes to disk at once."""
        history = layouts["file"][0]
        total = pq.ParquetFile(history).metadata.num_rows
        monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 700)
        small = build_cache(history, tmp_path / "a", budget=1000)
        assert small.stats.readings == total
        assert 700 <= small.stats.peak_buffer <= 1000 and small.stats.spills >= total // 1000
        tiny = build_cache(history, tmp_path / "b", budget=500)
        assert tiny.stats.peak_buffer == 0 and tiny.stats.spills == -(-total // 700)
        for a, b in zip(small.history(small.names).assets, tiny.history(tiny.names).assets, strict=True):
            np.testing.assert_array_equal(a.grid, b.grid)

    @settings(max_examples=60, deadline=None)
    @given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12), budget=st.integers(1, 60),
           seed=st.integers(0, 2**16))
    def test_spill_partitions_by_asset_in_reading_order(self, tmp_path_factory: pytest.TempPathFactory,
                                                        sizes: list[int], budget: int, seed: int) -> None:
        """Whatever the batches and budget, each asset's segment holds its readings in reading order."""
        rng = np.random.default_rng(seed)
        folder = tmp_path_factory.mktemp("spill")
        spill = _Spill(folder, budget)
        batches = [Coded(rng.random(n), rng.integers(0, 4, n), rng.integers(0, 3, n), rng.random(n))
                   for n in sizes]
        for b in batches:
            spill.add(b)
            assert spill.held <= budget
        spill.flush()
        asset = np.concatenate([b.asset for b in batches])
        ts = np.concatenate([b.ts for b in batches])
        for a in range(4):
            seg = spill.segment(a)
            got = np.fromfile(seg, dtype=[("ts", "<f8"), ("channel", "<i4"), ("value", "<f8")]) \
                if seg.exists() else np.empty(0, dtype=[("ts", "<f8")])
            np.testing.assert_array_equal(got["ts"], ts[asset == a])
        assert spill.peak <= budget

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=2, max_size=60),
           st.integers(1, 5))
    def test_period_counted_by_asset_is_the_in_memory_median(self, rows: list[tuple[int, int]],
                                                             parts: int) -> None:
        """The median gap from per-asset counts equals infer_period over everything at once."""
        keys = np.array([k for k, _ in rows])
        ts = np.array([t * 7.5 for _, t in rows])
        try:
            want = infer_period(ts, keys)
        except DataError:
            with pytest.raises(DataError):
                _median_gap(iter([np.empty(0)]))
            return
        from training.data import series_gaps
        per = [series_gaps(ts[keys % parts == p], keys[keys % parts == p]) for p in range(parts)]
        assert _median_gap(iter(per)) == want


class TestBadInput:
    def test_corrupt_file_in_a_folder_is_named(self, layouts: dict[str, tuple[Path, Path]],
                                               tmp_path: Path) -> None:
        """A corrupt Parquet file among good ones stops the stream with its name."""
        folder = tmp_path / "h"
        folder.mkdir()
        pq.write_table(pq.read_table(layouts["file"][0]), folder / "a.parquet")
        (folder / "b.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(DataError, match=r"b\.parquet"):
            build_cache(folder, tmp_path / "w")

    def test_wrong_schema_in_a_folder_is_named(self, tmp_path: Path) -> None:
        """A file without the value column is named, with what is missing."""
        folder = tmp_path / "h"
        folder.mkdir()
        good = {"ts": [0, 60], "asset": ["p"] * 2, "channel": ["t"] * 2, "value": [1.0, 2.0]}
        pq.write_table(pa.table(good), folder / "a.parquet")
        pq.write_table(pa.table({"ts": [120], "asset": ["p"], "channel": ["t"], "reading": [3.0]}),
                       folder / "b.parquet")
        with pytest.raises(DataError, match=r"b\.parquet: missing column\(s\) \['value'\]"):
            build_cache(folder, tmp_path / "w")

    def test_work_folder_must_be_empty(self, layouts: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
        """An old cache is never mixed into a new one."""
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "old").write_text("x")
        with pytest.raises(ValueError, match="must be empty"):
            build_cache(layouts["file"][0], tmp_path / "w")


def test_pick_assets_keeps_to_the_budget() -> None:
    """A seeded choice of whole assets up to the budget, at least one even when it alone is larger."""
    sizes = [5, 50, 20, 20, 1, 8]
    chosen = pick_assets(sizes, 40, seed=3)
    assert sum(sizes[i] for i in chosen) <= 40 and chosen == sorted(chosen)
    assert chosen == pick_assets(sizes, 40, seed=3)
    assert len(pick_assets([100, 200], 10, seed=0)) == 1


class TestFitStreaming:
    def test_vigil_train_fit_stream_matches_the_in_memory_fit(self, layouts: dict[str, tuple[Path, Path]],
                                                              tmp_path: Path) -> None:
        """`vigil-train fit --stream` on a partitioned folder: the same split, windows and normalisation
        as the in-memory fit of the single file, a model the agent loads, and the cache left in --work-dir."""
        common = ["--window", "12", "--horizon", "2", "--fail-horizon", "36", "--hidden", "4",
                  "--epochs", "1", "--windows-per-epoch", "300", "--val-fraction", "0.4", "--quiet"]
        history, events = layouts["asset"]
        assert cli.main(["fit", "--history", str(layouts["file"][0]), "--events", str(events), *common,
                         "--out", str(tmp_path / "mem.pt")]) == 0
        assert cli.main(["fit", "--history", str(history), "--events", str(events), *common, "--stream",
                         "--stream-budget", "3000", "--work-dir", str(tmp_path / "work"),
                         "--out", str(tmp_path / "stream.pt")]) == 0
        mem, got = (json.loads((tmp_path / f"{n}.summary.json").read_text()) for n in ("mem", "stream"))
        for key in ("train_assets", "val_assets", "train_windows", "val_windows", "period_s", "heads"):
            assert got[key] == mem[key], key
        assert got["stream"]["peak_buffer"] <= 3000 < got["stream"]["readings"]
        m_spec, s_spec = load_model(tmp_path / "mem.pt").spec, load_model(tmp_path / "stream.pt").spec
        np.testing.assert_allclose(s_spec.normalisation.mean, m_spec.normalisation.mean, rtol=1e-6)
        np.testing.assert_allclose(s_spec.normalisation.std, m_spec.normalisation.std, rtol=1e-6)
        np.testing.assert_allclose(s_spec.input_quantiles, m_spec.input_quantiles, rtol=1e-12)
        cached = GridCache.open(tmp_path / "work").names
        assert cached == tuple(sorted(mem["train_assets"] + mem["val_assets"]))

    def test_stream_cells_bound_what_each_split_takes(self, layouts: dict[str, tuple[Path, Path]],
                                                      tmp_path: Path) -> None:
        """With a small --stream-cells, the training windows come from fewer, whole assets."""
        history, events = layouts["date"]
        opts = FitOptions(history=history, events=events, out=tmp_path / "m.pt", window=12, horizon=2,
                          fail_horizon=36, val_fraction=0.4, stream=True, stream_cells=400)
        with tempfile.TemporaryDirectory() as work:
            data = streamed(opts, Path(work))
            assert len(data.source.assets) == 3 and data.loader["train_assets_drawn"] == 1
            drawn = {data.train.ws.assets[a] for a in np.unique(data.train.ws.asset)}
            assert len(drawn) == 1 and 0 < len(data.train.ws) < data.train_windows
