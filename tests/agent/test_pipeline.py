"""The pipeline: messages into windows, due windows through a real TorchScript model, outputs out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from agent import state
from agent.alerts import alert_id, encode, encode_fast, rfc3339_ms
from agent.config import (
    AgentConfig,
    BrokerConfig,
    StateConfig,
    SubscriptionConfig,
    WindowsConfig,
)
from agent.config import ModelConfig as ModelSection
from agent.ingest import Reason
from agent.metrics import Metrics
from agent.pipeline import BatchResult, Pipeline
from agent.runtime import Outputs, load_model
from agent.spec import Combiner
from agent.windows import cell_of
from tests.agent.conftest import CHANNELS, PERIOD_S, WINDOW, ModelFile, format_1_window_arrays, make_spec

T0 = 1_767_225_600.0  # a cell boundary: 2026-01-01T00:00:00Z
WALL = T0 + 10_000 * PERIOD_S  # the wall clock, well after every reading
AGENT = "gw-test"
REJECTIONS = ("malformed", "payload_size", "topic", "name", "type", "nonfinite", "ts", "future",
              "too_old", "late", "duplicate", "asset_limit")


def config(tmp_path: Path, model: Path, **windows: Any) -> AgentConfig:
    w: dict[str, Any] = {"max_gap": 2, "allowed_lateness": 3, "max_assets": 3}
    w.update(windows)
    return AgentConfig(
        broker=BrokerConfig(client_id=AGENT),
        model=ModelSection(path=model),
        subscriptions=[
            SubscriptionConfig(filter="plant/+/+", template="plant/{asset}/{channel}"),
            SubscriptionConfig(filter="multi/+", template="multi/{asset}", codec="json-multi"),
        ],
        windows=WindowsConfig(**w),
        state=StateConfig(dir=tmp_path / "state"),
    )


class Harness:
    """A pipeline with a fresh registry and a fixed wall clock, plus helpers to feed it."""

    def __init__(self, cfg: AgentConfig, runtime: Any) -> None:
        self.registry = CollectorRegistry()
        self.pipe = Pipeline(cfg, runtime, Metrics(self.registry), wall=lambda: WALL)

    def send(self, asset: str, channel: str, ts: float, value: float | str) -> tuple[int, list[Reason]]:
        payload = json.dumps({"ts": ts, "value": value}).encode()
        return self.pipe.ingest(0, f"plant/{asset}/{channel}", payload, WALL, 0.0)

    def cell(self, asset: str, k: int, values: tuple[float, ...] = (0.1, 0.2, 0.3),
             channels: tuple[str, ...] = CHANNELS, offset: float = 1.0) -> None:
        """All (or some) channels of cell k, each reading accepted."""
        for i, ch in enumerate(channels):
            n, why = self.send(asset, ch, T0 + k * PERIOD_S + offset + i * 0.1, values[i])
            assert (n, why) == (1, []), (asset, k, ch, why)

    def batch(self, max_batch: int = 64) -> BatchResult:
        return self.pipe.run_batch(max_batch)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def h(tmp_path: Path, model_file: ModelFile) -> Harness:
    rt = load_model(model_file.path)
    return Harness(config(tmp_path, model_file.path), rt)


def warm(h: Harness, asset: str, cells: int = WINDOW) -> BatchResult:
    for k in range(cells):
        h.cell(asset, k)
    return h.batch()


class TestScoring:
    def test_window_scored_when_its_cell_completes(self, h: Harness, model_file: ModelFile) -> None:
        """The first whole window is scored once the last channel of its newest cell arrives."""
        for k in range(WINDOW - 1):
            h.cell("p1", k)
        h.cell("p1", WINDOW - 1, channels=CHANNELS[:2])
        assert h.batch().risks == []  # warming up: nothing to score, and not stale either
        assert h.sample("vigil_windows_inferred_total") == 0.0
        h.send("p1", CHANNELS[2], T0 + (WINDOW - 1) * PERIOD_S + 7.5, 0.3)
        out = h.batch()
        assert len(out.risks) == 1
        doc = out.risks[0].doc
        assert doc["asset"] == "p1"
        assert doc["ts"] == rfc3339_ms(T0 + (WINDOW - 1) * PERIOD_S + 7.5)
        assert doc["model_version"] == model_file.spec.version
        assert doc["stale"] is False
        assert 0.0 <= doc["risk"] <= 1.0
        assert 0.0 <= doc["signals"]["fail_prob"] <= 1.0
        assert doc["level"] in ("ok", "warning", "critical")
        assert h.sample("vigil_windows_inferred_total") == 1.0

    def test_risk_doc_is_valid_json(self, h: Harness) -> None:
        """A risk doc encodes to JSON with the fields DESIGN.md names."""
        doc = json.loads(encode(warm(h, "p1").risks[0].doc))
        assert {"asset", "ts", "risk", "level", "stale", "signals", "model_version"} <= set(doc)

    def test_partial_newest_cell_waits(self, h: Harness) -> None:
        """A newer cell with only some channels is not scored until it is complete."""
        warm(h, "p1")
        h.cell("p1", WINDOW, channels=CHANNELS[:2])
        assert h.pipe.n_ready == 0
        assert h.batch().risks == []
        h.cell("p1", WINDOW, channels=CHANNELS[2:], values=(0.3,), offset=5.0)
        out = h.batch()
        assert [r.doc["ts"] for r in out.risks] == [rfc3339_ms(T0 + WINDOW * PERIOD_S + 5.0)]
        assert h.sample("vigil_windows_inferred_total") == 2.0

    def test_a_newer_cell_closes_the_previous_one(self, h: Harness) -> None:
        """When a new cell starts, the previous one is scored even if a channel is missing in it."""
        warm(h, "p1")
        h.cell("p1", WINDOW, channels=CHANNELS[:2])
        h.cell("p1", WINDOW + 1, channels=CHANNELS[:1])
        out = h.batch()
        assert [r.doc["stale"] for r in out.risks] == [False]
        assert out.risks[0].doc["ts"] == rfc3339_ms(T0 + WINDOW * PERIOD_S + 1.1)

    def test_surprise_signal_from_the_second_window(self, h: Harness) -> None:
        """The surprise signal has a value once a window follows a forecast within the horizon;
        before, the first window's message names it with null (every documented field is there)."""
        first = warm(h, "p1").risks[0].doc
        assert first["signals"]["surprise"] is None
        assert b'"surprise":null' in encode_fast(first)
        h.cell("p1", WINDOW)
        second = h.batch().risks[0].doc
        assert 0.0 <= second["signals"]["surprise"] <= 1.0

    def test_deterministic(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Two pipelines fed the same readings publish the same risk docs."""
        docs = []
        for _ in range(2):
            h = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
            rng = np.random.default_rng(3)
            out = []
            for k in range(WINDOW + 4):
                h.cell("p1", k, values=tuple(rng.normal(size=3)))
                out += [r.doc for r in h.batch().risks]
            docs.append(out)
        assert docs[0] == docs[1]
        assert len(docs[0]) == 5  # windows ending at cells 7..11

    def test_batches_are_bounded(self, h: Harness) -> None:
        """run_batch scores at most max_batch windows; the rest wait for the next batch."""
        for asset in ("p1", "p2", "p3"):
            for k in range(WINDOW):
                h.cell(asset, k)
        assert h.pipe.n_ready == 3
        first = h.batch(max_batch=2)
        assert [r.asset for r in first.risks] == ["p1", "p2"]
        assert h.pipe.n_ready == 1
        assert [r.asset for r in h.batch(max_batch=2).risks] == ["p3"]
        assert h.sample("vigil_inference_batch_size_count") == 2.0
        assert h.sample("vigil_inference_batch_size_sum") == 3.0
        assert h.sample("vigil_inference_duration_seconds_count") == 2.0

    def test_batch_bounded_by_windows_not_assets(self, h: Harness) -> None:
        """Many closed windows of one asset (a fast replay) are scored at most max_batch at a time."""
        for k in range(WINDOW + 5):
            h.cell("p1", k)
        assert h.pipe.n_ready == 6
        first = h.batch(max_batch=2)
        assert len(first.risks) <= 2
        assert (h.sample("vigil_windows_inferred_total") or 0.0) <= 2.0
        assert h.pipe.n_ready == 6 - len(first.risks)

    def test_every_closed_window_is_scored(self, h: Harness) -> None:
        """Windows closed between batches are all scored, oldest first, none skipped."""
        for k in range(WINDOW + 5):
            h.cell("p1", k)
        docs = []
        while h.pipe.n_ready:
            docs += [r.doc for r in h.batch(max_batch=64).risks]
        assert [d["ts"] for d in docs] == [rfc3339_ms(T0 + k * PERIOD_S + 1.2)
                                           for k in range(WINDOW - 1, WINDOW + 5)]
        assert h.sample("vigil_windows_inferred_total") == 6.0

    def test_json_multi_feeds_the_same_windows(self, h: Harness) -> None:
        """json-multi messages fill windows like per-channel messages do."""
        for k in range(WINDOW):
            payload = json.dumps({"ts": T0 + k * PERIOD_S + 1,
                                  "values": dict(zip(CHANNELS, (0.1, 0.2, 0.3), strict=True))})
            assert h.pipe.ingest(1, "multi/m1", payload.encode(), WALL, 0.0) == (3, [])
        assert [r.doc["asset"] for r in h.batch().risks] == ["m1"]

    def test_one_huge_value_never_gives_a_nan_risk(self, h: Harness) -> None:
        """A finite but huge reading (1e39, past float32) is rejected as nonfinite at the door, so
        neither this nor any later risk turns NaN (alerts.encode refuses NaN)."""
        docs = []
        for k in range(3 * WINDOW):
            if k == WINDOW:
                assert h.send("p1", "temp", T0 + k * PERIOD_S + 1.0, 1e39) == (0, [Reason.NONFINITE])
                h.cell("p1", k, values=(0.2, 0.3), channels=CHANNELS[1:])
            else:
                h.cell("p1", k)
            docs += [r.doc for r in h.batch().risks]
        assert len(docs) == 2 * WINDOW + 1
        assert [d["ts"] for d in docs if not math.isfinite(d["risk"])] == []
        for d in docs:
            encode(d)


class TestStaleness:
    def test_gap_gives_one_stale_doc_then_nothing_until_whole(self, h: Harness) -> None:
        """A gap longer than max_gap publishes one stale doc and no inference until a whole window."""
        assert len(warm(h, "p1").risks) == 1
        gap_end = WINDOW + 3  # cells WINDOW..WINDOW+2 missing; max_gap is 2
        h.cell("p1", gap_end)
        out = h.batch()
        assert len(out.risks) == 1
        doc = out.risks[0].doc
        assert doc["stale"] is True and doc["asset"] == "p1" and doc["signals"] == {}
        assert doc["ts"] == rfc3339_ms(T0 + gap_end * PERIOD_S + 1.2)
        assert h.pipe.n_stale == 1
        for k in range(gap_end + 1, gap_end + WINDOW - 1):
            h.cell("p1", k)
            assert h.batch().risks == [], k
        assert h.sample("vigil_windows_inferred_total") == 1.0
        h.cell("p1", gap_end + WINDOW - 1)
        out = h.batch()
        assert [r.doc["stale"] for r in out.risks] == [False]
        assert h.sample("vigil_windows_inferred_total") == 2.0
        assert h.pipe.n_stale == 0

    def test_silent_asset_goes_stale_by_plant_event_time(self, h: Harness) -> None:
        """An asset that stops while others move on more than max_gap + 1 cells gets one stale doc."""
        warm(h, "p1")
        warm(h, "p2")
        h.cell("p2", WINDOW)
        h.cell("p2", WINDOW + 1)
        h.cell("p2", WINDOW + 2)
        h.batch()
        assert h.pipe.sweep_stale() == []
        h.cell("p2", WINDOW + 3)
        swept = h.pipe.sweep_stale()
        assert [(r.asset, r.doc["stale"]) for r in swept] == [("p1", True)]
        assert swept[0].doc["ts"] == rfc3339_ms(T0 + (WINDOW - 1) * PERIOD_S + 1.2)
        assert h.pipe.sweep_stale() == []
        assert h.pipe.n_stale == 1

    def test_short_gap_is_filled(self, h: Harness) -> None:
        """A gap of at most max_gap cells is forward-filled and scored normally."""
        warm(h, "p1")
        h.cell("p1", WINDOW + 2)  # cells WINDOW, WINDOW+1 missing
        assert [r.doc["stale"] for r in h.batch().risks] == [False]


class TestRejections:
    def test_asset_limit(self, h: Harness) -> None:
        """A new asset beyond max_assets is rejected; known assets keep working."""
        for asset in ("a1", "a2", "a3"):
            assert h.send(asset, "temp", T0 + 1, 1.0) == (1, [])
        assert h.send("a4", "temp", T0 + 1, 1.0) == (0, [Reason.ASSET_LIMIT])
        assert h.send("a1", "temp", T0 + 11, 1.0) == (1, [])
        assert "a4" not in h.pipe.assets

    def test_duplicate(self, h: Harness) -> None:
        """The same asset, channel and ts again is rejected as duplicate."""
        assert h.send("p1", "temp", T0 + 1, 1.0) == (1, [])
        assert h.send("p1", "temp", T0 + 1, 1.0) == (0, [Reason.DUPLICATE])
        assert h.send("p1", "temp", T0 + 1, 2.0) == (0, [Reason.DUPLICATE])

    def test_future(self, h: Harness) -> None:
        """A reading more than max_future_skew ahead of the wall clock is rejected as future."""
        assert h.send("p1", "temp", WALL + 301, 1.0) == (0, [Reason.FUTURE])
        assert h.send("p1", "temp", WALL + 299, 1.0) == (1, [])

    def test_too_old_and_old_history(self, h: Harness) -> None:
        """Before the 2000-01-01 floor is too_old; history from years ago is fine."""
        assert h.send("p1", "temp", 946_684_799.0, 1.0) == (0, [Reason.TOO_OLD])
        assert h.send("p2", "temp", 946_684_801.0, 1.0) == (1, [])

    def test_late(self, h: Harness) -> None:
        """A reading older than the asset's newest cell minus allowed_lateness is rejected as late."""
        warm(h, "p1")
        newest = WINDOW - 1
        assert h.send("p1", "temp", T0 + (newest - 4) * PERIOD_S + 5, 1.0) == (0, [Reason.LATE])
        assert h.send("p1", "temp", T0 + (newest - 3) * PERIOD_S + 5, 1.0) == (1, [])

    def test_payload_size(self, tmp_path: Path, model_file: ModelFile) -> None:
        """A payload over max_payload_bytes is rejected as payload_size; one at the limit is read."""
        h = Harness(config(tmp_path, model_file.path, max_payload_bytes=64),
                    load_model(model_file.path))
        body = json.dumps({"ts": T0 + 1, "value": 1.0}).encode()
        at_limit = body + b" " * (64 - len(body))
        assert h.pipe.ingest(0, "plant/p1/temp", at_limit, WALL, 0.0) == (1, [])
        assert h.pipe.ingest(0, "plant/p1/temp", at_limit + b" ", WALL, 0.0) == (0, [Reason.PAYLOAD_SIZE])

    def test_decoder_reasons_pass_through(self, h: Harness) -> None:
        """Decoder rejections (type, topic) come back from ingest unchanged."""
        assert h.send("p1", "temp", T0 + 1, "12.5") == (0, [Reason.TYPE])
        assert h.pipe.ingest(0, "other/p1/temp", b"{}", WALL, 0.0) == (0, [Reason.TOPIC])


def fed_pipeline(tmp_path: Path, model_file: ModelFile) -> tuple[Harness, list[tuple[float, ...]]]:
    """A pipeline fed WINDOW + 2 cells of asset p1, and the values of 4 cells more to come."""
    a = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
    rng = np.random.default_rng(5)
    values = [tuple(rng.normal(size=3)) for _ in range(WINDOW + 6)]
    for k in range(WINDOW + 2):
        a.cell("p1", k, values=values[k])
        a.batch()
    return a, values


def assert_goes_on_alike(a: Harness, b: Harness, values: list[tuple[float, ...]]) -> None:
    """Fed the same next cells, `b` publishes what `a` does and ends with the same state."""
    for k in range(WINDOW + 2, WINDOW + 6):
        a.cell("p1", k, values=values[k])
        b.cell("p1", k, values=values[k])
        assert [r.doc for r in b.batch().risks] == [r.doc for r in a.batch().risks]
    assert a.pipe.checkpoint_rows() == b.pipe.checkpoint_rows()


class TestCheckpoint:
    def test_restored_pipeline_decides_as_the_original(self, tmp_path: Path,
                                                        model_file: ModelFile) -> None:
        """A pipeline restored from checkpoint rows publishes what the original goes on to publish."""
        a, values = fed_pipeline(tmp_path, model_file)
        rows = a.pipe.checkpoint_rows()
        assert set(rows) == {"p1"}
        b = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
        assert b.pipe.restore(rows) == 1
        assert_goes_on_alike(a, b, values)

    def test_a_format_1_row_restores_and_decides_the_same(self, tmp_path: Path,
                                                          model_file: ModelFile) -> None:
        """A row written before format 2 (float64 values and forecasts, event times for every
        slot of the ring) restores, and the pipeline goes on to publish what the original does."""
        a, values = fed_pipeline(tmp_path, model_file)
        st = a.pipe.assets["p1"]
        assert st.surprise.mean is not None and st.surprise.logvar is not None
        # What Harness.cell sent: channel i of cell k at T0 + k * PERIOD_S + 1 + 0.1 * i.
        sent = [(T0 + k * PERIOD_S + 1.0 + 0.1 * i, i, values[k][i])
                for k in range(WINDOW + 2) for i in range(len(CHANNELS))]
        arrays = format_1_window_arrays(st.window, [(cell_of(t, PERIOD_S), i, t, v) for t, i, v in sent])
        meta, body = state._arrays({**arrays, "s_mean": st.surprise.mean.astype(np.float64),
                                    "s_logvar": st.surprise.logvar.astype(np.float64),
                                    "s_ewma": st.surprise.ewma})
        header = json.dumps({"format": 1, "arrays": meta, "window": st.window.state()[1],
                             "level": st.level.state(), "forecast_cell": st.surprise.forecast_cell,
                             "stale": st.stale, "risk": st.risk}).encode()
        b = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
        assert b.pipe.restore({"p1": state._HEADER.pack(len(header)) + header + body}) == 1
        assert_goes_on_alike(a, b, values)

    def test_a_bad_row_does_not_stop_the_others(self, tmp_path: Path, model_file: ModelFile) -> None:
        """A checkpoint row under a name that cannot be an asset is skipped; later rows still load."""
        a = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
        warm(a, "p1")
        blob = a.pipe.checkpoint_rows()["p1"]
        b = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
        b.pipe.restore({"bad/name": blob, "p1": blob})
        assert set(b.pipe.assets) == {"p1"}


class TestMetrics:
    def test_registered_at_zero(self, h: Harness, model_file: ModelFile) -> None:
        """Every reason, level and reload result is visible at zero, and the model info is set."""
        for reason in REJECTIONS:
            assert h.sample("vigil_readings_rejected_total", reason=reason) == 0.0
        for reason in ("unmapped", "unsupported", "bad_quality"):
            assert h.sample("vigil_readings_ignored_total", reason=reason) == 0.0
            assert h.sample("vigil_readings_rejected_total", reason=reason) is None
        for level in ("ok", "warning", "critical"):
            assert h.sample("vigil_alerts_total", level=level) == 0.0
        for result in ("success", "failure"):
            assert h.sample("vigil_model_reloads_total", result=result) == 0.0
        assert h.sample("vigil_model_info", version=model_file.spec.version) == 1.0
        assert h.sample("vigil_readings_accepted_total") == 0.0

    def test_assets_gauge(self, h: Harness) -> None:
        """vigil_assets counts the assets held after a batch."""
        warm(h, "p1")
        warm(h, "p2")
        assert h.sample("vigil_assets") == 2.0


# -- alerts, with a runtime whose failure probability is the newest value of channel 0 ----------

class FailProbRuntime:
    """A stand-in model: fail_prob = the window's newest (normalised) value of the first channel."""

    def __init__(self) -> None:
        self.spec = make_spec(heads=("fail_prob",), combiner=Combiner(1.0, 0.0, 0.0)).with_version(b"f")
        self.sha256 = "0" * 64

    def infer(self, x: npt.NDArray[np.float32]) -> Outputs:
        return Outputs(fail_prob=np.clip(x[:, -1, 0], 0.001, 0.999).astype(np.float32))


@pytest.fixture
def fake(tmp_path: Path) -> Harness:
    return Harness(config(tmp_path, tmp_path / "unused.pt"), FailProbRuntime())


def step(h: Harness, k: int, risk: float) -> BatchResult:
    h.cell("p1", k, values=(risk, 0.0, 0.0))
    return h.batch()


class TestAlerts:
    def test_transition_alert(self, fake: Harness) -> None:
        """Risk above critical for `dwell` windows raises one alert with every field DESIGN.md names."""
        for k in range(WINDOW):
            assert step(fake, k, 0.1).alerts == []
        assert step(fake, WINDOW, 0.9).alerts == []  # dwell is 2
        out = step(fake, WINDOW + 1, 0.9)
        assert len(out.alerts) == 1
        a = out.alerts[0]
        assert (a.asset, a.level) == ("p1", "critical")
        doc = a.doc
        assert doc["previous_level"] == "ok"
        assert doc["risk"] == pytest.approx(0.9, abs=1e-6)
        assert doc["ts"] == rfc3339_ms(T0 + (WINDOW + 1) * PERIOD_S + 1.2)
        assert doc["horizon_s"] == fake.pipe.spec.horizon_s
        assert doc["top_channels"] == []
        assert doc["model_version"] == fake.pipe.spec.version
        assert doc["agent_id"] == AGENT
        cell = cell_of(T0 + (WINDOW + 1) * PERIOD_S, PERIOD_S)
        assert doc["alert_id"] == alert_id(AGENT, "p1", cell, "critical", "ok")
        assert doc["emitted_at"] == rfc3339_ms(WALL)
        json.loads(encode(doc))

    def test_escalation_and_recovery(self, fake: Harness) -> None:
        """ok -> warning -> critical -> ok, each alert naming the level it left."""
        risks = [0.1] * WINDOW + [0.6, 0.6, 0.9, 0.9, 0.1, 0.1]
        got = []
        for k, r in enumerate(risks):
            got += [(a.doc["previous_level"], a.level) for a in step(fake, k, r).alerts]
        assert got == [("ok", "warning"), ("warning", "critical"), ("critical", "ok")]

    def test_risk_doc_level_matches_the_alert(self, fake: Harness) -> None:
        """The risk doc of the window that changed the level carries the new level, as its alert does."""
        for k in range(WINDOW + 1):
            step(fake, k, 0.1 if k < WINDOW else 0.9)
        out = step(fake, WINDOW + 1, 0.9)
        assert [a.level for a in out.alerts] == ["critical"]
        assert out.risks[0].doc["level"] == "critical"

    def test_rul_rides_on_alert_and_risk_in_seconds(self, tmp_path: Path) -> None:
        """A model with a RUL head: alerts and risk docs carry `rul` (DESIGN), cells times the period."""

        class RulRuntime(FailProbRuntime):
            def __init__(self) -> None:
                self.spec = make_spec(heads=("fail_prob", "rul"), combiner=Combiner(1.0, 0.0, 0.0),
                                      rul_cap=125.0).with_version(b"r")
                self.sha256 = "0" * 64

            def infer(self, x: npt.NDArray[np.float32]) -> Outputs:
                out = super().infer(x)
                return Outputs(fail_prob=out.fail_prob, rul=np.full(len(x), 42.0, np.float32))

        h = Harness(config(tmp_path, tmp_path / "unused.pt"), RulRuntime())
        alerts = []
        for k in range(WINDOW + 2):
            out = step(h, k, 0.1 if k < WINDOW else 0.9)
            alerts += out.alerts
            if out.risks:
                assert out.risks[-1].doc["rul"] == pytest.approx(42.0 * PERIOD_S)
        assert [a.level for a in alerts] == ["critical"]
        assert alerts[0].doc["rul"] == pytest.approx(42.0 * PERIOD_S)

    def test_no_rul_key_without_the_head(self, fake: Harness) -> None:
        for k in range(WINDOW + 2):
            out = step(fake, k, 0.1 if k < WINDOW else 0.9)
            assert all("rul" not in r.doc for r in out.risks)
            assert all("rul" not in a.doc for a in out.alerts)
