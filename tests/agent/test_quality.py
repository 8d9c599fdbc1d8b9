"""Report by exception and quality in the pipeline: held subscriptions, bad quality, degraded assets,
the hold the model was trained with, and Sparkplug births and deaths that end holding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig, BrokerConfig, StateConfig, SubscriptionConfig, WindowsConfig
from agent.config import ModelConfig as ModelSection
from agent.ingest import Cell, Decoder, Reason
from agent.metrics import Metrics
from agent.pipeline import Pipeline, RiskOut
from agent.runtime import load_model
from agent.sparkplug.codec import encode, new_metric
from agent.sparkplug.sparkplug_b_pb2 import DataType
from agent.spec import ModelSpec
from tests.agent.conftest import CHANNELS, PERIOD_S, WINDOW, ModelFile
from tests.sparkplug.helpers import nbirth, ndeath

T0 = 1_767_225_600.0
WALL = T0 + 10_000 * PERIOD_S


def pipeline(tmp_path: Path, model: Path, *subs: dict[str, Any]) -> Pipeline:
    cfg = AgentConfig(
        broker=BrokerConfig(client_id="gw-hold"), model=ModelSection(path=model),
        subscriptions=[SubscriptionConfig.model_validate(s) for s in subs],
        windows=WindowsConfig(max_gap=1, allowed_lateness=2), state=StateConfig(dir=tmp_path / "state"))
    return Pipeline(cfg, load_model(model), Metrics(CollectorRegistry()), wall=lambda: WALL)


HELD = {"filter": "rbe/+/+", "template": "rbe/{asset}/{channel}", "hold": "2m", "quality_field": "q"}
PLAIN = {"filter": "plant/+/+", "template": "plant/{asset}/{channel}"}


def send(p: Pipeline, sub: int, asset: str, channel: str, k: int, value: Any, **extra: Any
         ) -> tuple[int, list[Reason]]:
    prefix = "rbe" if sub == 0 else "plant"
    doc = {"ts": T0 + k * PERIOD_S + 1.0, "value": value, **extra}
    return p.ingest(sub, f"{prefix}/{asset}/{channel}", json.dumps(doc).encode(), WALL, 0.0)


def report_by_exception(p: Pipeline, sub: int, asset: str, cells: int) -> list[RiskOut]:
    """temp every cell, vib every third, press only in the first cell (constant); the risks
    of the windows each cell closed, scored as they close."""
    risks = []
    for k in range(cells):
        send(p, sub, asset, "temp", k, 20.0 + 0.1 * k)
        if k % 3 == 0:
            send(p, sub, asset, "vib", k, 1.0)
        if k == 0:
            send(p, sub, asset, "press", k, 3.0)
        risks += p.run_batch(256).risks
    return risks


class TestHold:
    def test_held_subscription_scores_every_cell(self, tmp_path: Path, model_file: ModelFile) -> None:
        """The same sparse stream: scored in every cell on the held subscription (hold 2 min =
        12 cells covers the constant `press`), stale on the plain one (max_gap 1)."""
        p = pipeline(tmp_path, model_file.path, HELD, PLAIN)
        held = report_by_exception(p, 0, "held", 12)
        plain = report_by_exception(p, 1, "plain", 12)
        assert len(held) == 12 - WINDOW and not any(r.doc["stale"] for r in held)
        assert [r.doc["stale"] for r in plain] == [True]

    def test_hold_limit_makes_the_asset_stale(self, tmp_path: Path, model_file: ModelFile) -> None:
        """`press` reported once holds 12 cells: the window of cell 13 is no longer whole."""
        p = pipeline(tmp_path, model_file.path, HELD)
        risks = report_by_exception(p, 0, "held", 16)
        stale = [r for r in risks if r.doc["stale"]]
        assert [r.ts for r in stale] == [T0 + 13 * PERIOD_S + 1.0]
        assert len(risks) == len(range(WINDOW - 1, 13)) + 1  # whole up to cell 12, then one notice

    def test_sweep_waits_for_the_hold(self, tmp_path: Path, model_file: ModelFile) -> None:
        """An asset of a held subscription is not swept stale while its hold runs, only after."""
        p = pipeline(tmp_path, model_file.path, HELD, PLAIN)
        report_by_exception(p, 0, "held", WINDOW)
        for k in range(WINDOW + 10):
            for ch in CHANNELS:
                send(p, 1, "other", ch, k, 1.0)
        p.run_batch(256)
        assert [r.asset for r in p.sweep_stale()] == []
        for k in range(WINDOW + 10, WINDOW + 14):
            for ch in CHANNELS:
                send(p, 1, "other", ch, k, 1.0)
        assert [r.asset for r in p.sweep_stale()] == ["held"]


    def test_a_restored_asset_takes_its_subscriptions_hold(self, tmp_path: Path,
                                                           model_file: ModelFile) -> None:
        """A checkpoint does not say which subscription an asset came from: restored, it holds as
        long as the longest subscription until its first reading, then as its own does."""
        p = pipeline(tmp_path, model_file.path, HELD, PLAIN)
        report_by_exception(p, 1, "plain", 3)
        rows = p.checkpoint_rows()
        q = pipeline(tmp_path, model_file.path, HELD, PLAIN)
        q.restore(rows)
        assert q.assets["plain"].window.hold == 12
        send(q, 1, "plain", "temp", 3, 20.0)
        assert q.assets["plain"].window.hold == 0 and q.assets["plain"].window.reach == 1


class TestQuality:
    def test_bad_quality_stops_the_hold_and_degrades_the_asset(self, tmp_path: Path,
                                                                 model_file: ModelFile) -> None:
        """A bad `q` is ignored (`bad_quality`), not written; the asset is announced stale and
        degraded at once, its windows are not scored while the channel is bad, and a good value
        ends it."""
        p = pipeline(tmp_path, model_file.path, HELD)
        assert all(not r.doc["stale"] for r in report_by_exception(p, 0, "held", WINDOW + 2))
        k = WINDOW + 2
        assert send(p, 0, "held", "press", k, None, q="BAD") == (0, [Reason.QUALITY])
        _, notices = p.take_sparkplug()
        assert [(r.doc["stale"], r.doc["degraded"]) for r in notices.risks] == [(True, ["press"])]
        for j in range(k, k + 3):
            send(p, 0, "held", "temp", j, 20.0)
        during = p.run_batch(256).risks
        assert all(r.doc["degraded"] == ["press"] for r in during)
        assert all(r.ts < T0 + k * PERIOD_S for r in during if not r.doc["stale"])  # closed before it
        assert during[-1].doc["stale"]
        assert send(p, 0, "held", "press", k + 3, 3.1, q="Good") == (1, [])
        for j in range(k + 3, k + 3 + WINDOW + 1):  # until a window holds no bad cell
            send(p, 0, "held", "temp", j, 20.0)
        after = p.run_batch(256).risks
        assert all("degraded" not in r.doc for r in after)
        assert after and not after[-1].doc["stale"]

    def test_an_asset_whose_first_reading_is_bad(self, tmp_path: Path, model_file: ModelFile) -> None:
        """The notice of an asset never seen before is dated at its bad reading."""
        p = pipeline(tmp_path, model_file.path, HELD)
        assert send(p, 0, "new", "vib", 3, None, q="bad") == (0, [Reason.QUALITY])
        _, notices = p.take_sparkplug()
        assert [(r.ts, r.doc["degraded"]) for r in notices.risks] == [(T0 + 3 * PERIOD_S + 1.0, ["vib"])]

    def test_quality_field_decoding(self, model_file: ModelFile) -> None:
        """json and json-multi: a quality not in `good_quality` (or missing: good) marks the
        readings bad; json-multi may give one quality or one per channel."""
        single = Decoder(SubscriptionConfig.model_validate(HELD), CHANNELS)
        bad: list[Cell] = []
        why: list[Reason] = []
        got = single.decode_cells("rbe/a/temp", b'{"ts": 1767225600, "value": 1.0, "q": 0}', WALL, why, bad)
        assert got == ("a", []) and why == [Reason.QUALITY] and [b[1] for b in bad] == [[0]]
        why = []
        got = single.decode_cells("rbe/a/temp", b'{"ts": 1767225600, "value": 1.0, "q": 192}', WALL, why, [])
        assert got is not None and got[1][0][2] == [1.0] and why == []
        multi = Decoder(SubscriptionConfig(filter="m/+", template="m/{asset}", codec="json-multi",
                                           quality_field="q", good_quality=["ok"]), CHANNELS)
        bad, why = [], []
        got = multi.decode_cells("m/a", json.dumps({"ts": T0, "values": {"temp": 1.0, "vib": 2.0, "rpm": 3.0},
                                                    "q": {"vib": "fault"}}).encode(), WALL, why, bad)
        assert got is not None and got[1][0][1] == [0] and why == [Reason.QUALITY, Reason.UNMAPPED]
        assert [b[1] for b in bad] == [[1]]
        bad, why = [], []
        got = multi.decode_cells("m/a", json.dumps({"ts": T0, "values": {"temp": 1.0}, "q": "OK"}).encode(),
                                 WALL, why, bad)
        assert got is not None and why == [] and bad == []


class TestTrainedHold:
    def test_warns_when_the_subscription_holds_otherwise(self, tmp_path: Path, model_file: ModelFile,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        """A model trained with a hold of 0 beside a subscription holding 2 min: a warning naming both."""
        rt = load_model(model_file.path)
        rt.spec = dataclasses.replace(rt.spec, hold_s=0.0)
        cfg = AgentConfig(broker=BrokerConfig(client_id="gw-hold"), model=ModelSection(path=model_file.path),
                          subscriptions=[SubscriptionConfig.model_validate(HELD)],
                          state=StateConfig(dir=tmp_path / "state"))
        events: list[tuple[str, dict[str, Any]]] = []

        class Log:
            def warning(self, event: str, **kw: Any) -> None:
                events.append((event, kw))

        Pipeline(cfg, rt, Metrics(CollectorRegistry()), wall=lambda: WALL, log=Log())
        assert [(e, kw["hold_s"], kw["model_hold_s"]) for e, kw in events] == [
            ("hold_differs_from_model", 120.0, 0.0)]

    def test_old_metadata_without_hold_loads(self, model_file: ModelFile) -> None:
        """Metadata written before `hold_s` existed loads, with the hold unknown (None)."""
        raw = json.loads(model_file.spec.to_json())
        raw.pop("hold_s")
        assert ModelSpec.from_json(json.dumps(raw)).hold_s is None


class TestSparkplugEndsHolding:
    def _pipe(self, tmp_path: Path, model: Path) -> Pipeline:
        return pipeline(tmp_path, model, {"filter": "spBv1.0/g1/#", "codec": "sparkplug"})

    @staticmethod
    def _send(p: Pipeline, kind: str, payload: bytes,
              device: str | None = "pump-1") -> tuple[int, list[Reason]]:
        topic = f"spBv1.0/g1/{kind}/edge1" + (f"/{device}" if device else "")
        return p.ingest(0, topic, payload, WALL, 0.0)

    @staticmethod
    def _ms(k: int) -> int:
        return int((T0 + k * PERIOD_S + 1.0) * 1000)

    def _birth(self, p: Pipeline, seq: int, k: int, channels: tuple[str, ...] = CHANNELS) -> None:
        metrics = [new_metric(DataType.Double, 1.0 + i, name=c, alias=i + 1, ts_ms=self._ms(k))
                   for i, c in enumerate(CHANNELS) if c in channels]
        assert self._send(p, "DBIRTH", encode(metrics, self._ms(k), seq))[1] == []

    def _temp(self, p: Pipeline, seq: int, k: int) -> None:
        data = encode([new_metric(DataType.Double, 20.0 + k, alias=1, ts_ms=self._ms(k))], self._ms(k), seq)
        assert self._send(p, "DDATA", data) == (1, [])

    def test_values_hold_until_a_rebirth_drops_them(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Only temp changes: vib and press hold (Sparkplug holds by default) and every cell is
        scored; a rebirth that no longer lists press ends its hold."""
        p = self._pipe(tmp_path, model_file.path)
        self._send(p, "NBIRTH", nbirth(), None)
        self._birth(p, 1, 0)
        for k in range(1, WINDOW + 4):
            self._temp(p, k + 1, k)
        held = p.run_batch(256).risks
        assert len(held) == 4 and not any(r.doc["stale"] for r in held)
        seq = WINDOW + 5
        self._birth(p, seq, WINDOW + 4, channels=("temp", "vib"))
        for k in range(WINDOW + 5, WINDOW + 8):
            self._temp(p, seq + k - WINDOW - 4, k)
        after = p.run_batch(256).risks
        assert after and after[-1].doc["stale"]

    def test_death_ends_holding(self, tmp_path: Path, model_file: ModelFile) -> None:
        """After an NDEATH nothing the node said holds: the cells after its death are no longer
        filled from the values before it (they were, a moment before the death)."""
        p = self._pipe(tmp_path, model_file.path)
        self._send(p, "NBIRTH", nbirth(), None)
        self._birth(p, 1, 0)
        for k in range(1, WINDOW + 1):
            self._temp(p, k + 1, k)
        p.run_batch(256)
        w = p.assets["pump-1"].window
        assert w.extract(w.newest + 2) is not None  # held
        self._send(p, "NDEATH", ndeath(0), None)
        _, notices = p.take_sparkplug()
        assert [r.doc["stale"] for r in notices.risks] == [True]
        assert w.extract(w.newest + 2) is None
