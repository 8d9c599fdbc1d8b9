"""The hot path takes shortcuts (grouped writes, caches, orjson, a lock-free intake): each must
give exactly what the plain path gives."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent.app import Intake, intake_nap_s
from agent.config import AgentConfig, BrokerConfig, StateConfig, SubscriptionConfig, WindowsConfig
from agent.config import ModelConfig as ModelSection
from agent.ingest import MAX_ABS_VALUE, Reason, loads
from agent.metrics import Metrics
from agent.pipeline import Pipeline
from agent.risk import SurpriseTracker, surprise_probability, update_surprise
from agent.runtime import load_model
from agent.windows import AssetWindow
from tests.agent.conftest import CHANNELS, PERIOD_S, ModelFile

T0 = 1_767_225_600.0
WALL = T0 + 1_000 * PERIOD_S
SOURCES = (*CHANNELS, "temperature", "bogus", "bad+name")  # "temperature" maps onto "temp"


def _config(tmp: Path, model: Path, aggregation: str) -> AgentConfig:
    return AgentConfig(
        broker=BrokerConfig(client_id="gw-hot"), model=ModelSection(path=model),
        subscriptions=[
            SubscriptionConfig(filter="plant/+/+", template="plant/{asset}/{channel}",
                               channel_map={"temperature": "temp"}),
            SubscriptionConfig(filter="multi/+", template="multi/{asset}", codec="json-multi",
                               channel_map={"temperature": "temp"}, scale={"press": 2.0}),
        ],
        windows=WindowsConfig(max_gap=2, allowed_lateness=3, max_assets=2, aggregation=aggregation),
        state=StateConfig(dir=tmp / "state"))


class PerReading(Pipeline):
    """The plain path: every reading decoded into a `Reading` and written on its own."""

    def ingest(self, sub_index: int, topic: str, payload: bytes, arrival_wall: float,
               arrival_mono: float) -> tuple[int, list[Reason]]:
        rejects: list[Reason] = []
        if len(payload) > self.cfg.windows.max_payload_bytes:
            return 0, [Reason.PAYLOAD_SIZE]
        accepted = 0
        for r in self.decoders[sub_index].decode(topic, payload, arrival_wall, rejects):
            reason = self._write(r, arrival_wall, arrival_mono)
            if reason is None:
                accepted += 1
            else:
                rejects.append(reason)
        return accepted, rejects


values = st.one_of(st.floats(-50, 50), st.integers(-5, 5), st.just(True), st.just("1.5"), st.none(),
                   st.just(float("nan")), st.just(1e300))
item = st.fixed_dictionaries({
    "ts": st.one_of(st.integers(-6, 40).map(lambda k: T0 + k * PERIOD_S + 1.0),
                    st.integers(0, 40).map(lambda k: T0 + k * PERIOD_S + 3.5), st.just(WALL + 1e4),
                    st.just(None)),
    "values": st.dictionaries(st.sampled_from(SOURCES), values, max_size=6)})
message = st.one_of(
    st.tuples(st.just(0), st.sampled_from(("pump-1", "pump-2", "pump-3", "bad+")), st.sampled_from(SOURCES),
              item),
    st.tuples(st.just(1), st.sampled_from(("pump-1", "pump-2", "pump-3")), st.just(""),
              st.one_of(item, st.lists(item, max_size=3))))


def _encode(msg: tuple[int, str, str, Any]) -> tuple[int, str, bytes]:
    sub, asset, channel, doc = msg
    if sub == 0:
        v = next(iter(doc["values"].values()), 1.0)
        return 0, f"plant/{asset}/{channel}", json.dumps({"ts": doc["ts"], "value": v}).encode()
    return 1, f"multi/{asset}", json.dumps(doc).encode()


def _state(p: Pipeline) -> dict[str, Any]:
    out: dict[str, Any] = {"n_ready": p.n_ready, "due": list(p._due), "dirty": sorted(p.dirty)}
    for asset, s in sorted(p.assets.items()):
        arrays, counters = s.window.state()
        out[asset] = ({k: v.tolist() for k, v in arrays.items()}, counters,
                      [(c.end, None if c.window is None else c.window.tolist(), c.newest_ts)
                       for c in s.window.ready])
    return out


class TestGroupedWrites:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(msgs=st.lists(message, max_size=40), aggregation=st.sampled_from(["last", "mean"]))
    def test_same_windows_reasons_and_counts(self, tmp_path: Path, model_file: ModelFile,
                                              msgs: list[Any], aggregation: str) -> None:
        """Messages through the hot path and through the per-reading path leave the same windows,
        closed windows, counts and rejection reasons (in the same order)."""
        cfg = _config(tmp_path, model_file.path, aggregation)
        rt = load_model(model_file.path)
        fast = Pipeline(cfg, rt, Metrics(CollectorRegistry()), wall=lambda: WALL)
        plain = PerReading(cfg, rt, Metrics(CollectorRegistry()), wall=lambda: WALL)
        for msg in msgs:
            sub, topic, payload = _encode(msg)
            assert fast.ingest(sub, topic, payload, WALL, 1.0) == plain.ingest(sub, topic, payload, WALL, 1.0)
        assert json.dumps(_state(fast)) == json.dumps(_state(plain))

    @given(cells=st.lists(st.tuples(st.integers(0, 30), st.lists(st.integers(0, 2), max_size=5),
                                    st.sampled_from([0.0, 0.25, 0.5])), max_size=30),
           aggregation=st.sampled_from(["last", "mean"]))
    def test_update_cell_is_update_in_order(self, cells: list[Any], aggregation: str) -> None:
        """`update_cell` equals `update` called for each reading, also when a channel repeats
        or the cell closes part-way through."""
        a = AssetWindow(3, 4, max_gap=1, lateness=2, agg=aggregation)  # type: ignore[arg-type]
        b = AssetWindow(3, 4, max_gap=1, lateness=2, agg=aggregation)  # type: ignore[arg-type]
        for k, chans, frac in cells:
            ts = T0 + (k + frac) * PERIOD_S
            vals = [float(i + k) for i in range(len(chans))]
            rejected: list[Any] = []
            n = a.update_cell(k, ts, chans, vals, rejected)
            outcomes = [b.update(k, c, ts, v) for c, v in zip(chans, vals, strict=True)]
            assert n == sum(1 for o in outcomes if o == 0) and rejected == [o for o in outcomes if o]
        sa, sb = a.state(), b.state()
        assert sa[1] == sb[1] and all(np.array_equal(sa[0][k], sb[0][k], equal_nan=True) for k in sa[0])
        assert [(c.end, None if c.window is None else c.window.tolist()) for c in a.ready] == \
               [(c.end, None if c.window is None else c.window.tolist()) for c in b.ready]


class TestLoads:
    @given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                        | st.floats(allow_nan=False) | st.text(),
                        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20))
    def test_same_as_json(self, doc: Any) -> None:
        """orjson, where it parses, returns what json.loads returns."""
        raw = json.dumps(doc).encode()
        assert loads(raw) == json.loads(raw)

    def test_what_orjson_refuses_json_decides(self) -> None:
        """NaN, Infinity, 1e400, a BOM, UTF-16, lone surrogates and duplicate keys come out exactly
        as json.loads has them; an integer past 64 bits as the same number, as a float."""
        for raw in (b'{"value": NaN}', b'{"value": -Infinity}', b'{"v": 1e400}', '\ufeff{"v": 1}'.encode(),
                    '{"v": 2}'.encode("utf-16"), b'{"v": "\\ud800"}', b'{"v": 1, "v": 2}',
                    b'[1, 2.50, -0.0]'):
            assert repr(loads(raw)) == repr(json.loads(raw)), raw
        huge = b'{"v": 123456789012345678901234567890}'
        assert float(loads(huge)["v"]) == float(json.loads(huge)["v"]) > MAX_ABS_VALUE
        for raw in (b"{", b'{"v": 01}', b"\xff\xfe\xfa"):
            try:
                json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                pass
            else:
                raise AssertionError(raw)
            try:
                loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            raise AssertionError(f"loads accepted {raw!r}")


def _consume(q: Intake, got: list[float], lags: list[float], n: int) -> None:
    while len(got) < n and q.wait(5.0):
        while q.items:
            m = q.items.popleft()
            got.append(m[4])
            lags.append(time.monotonic() - m[3])


class TestIntake:
    def test_bounded(self) -> None:
        """Beyond its size `put` refuses (the caller counts the drop) and keeps what it has."""
        q = Intake(3)
        assert [q.put((0, "t", b"", 0.0, float(i))) for i in range(5)] == [True, True, True, False, False]
        assert [m[4] for m in q.items] == [0.0, 1.0, 2.0]

    def test_nap_is_a_quarter_of_the_latency_budget(self) -> None:
        """The worker's nap follows `max_wait_ms` (a quarter of it), within 0.5 and 5 ms."""
        assert [intake_nap_s(ms) for ms in (20.0, 8.0, 0.0, 1000.0)] == [0.005, 0.002, 0.0005, 0.005]

    def test_wait_times_out_empty(self) -> None:
        """With nothing put, `wait` returns False after its timeout (and 0 means do not wait)."""
        q = Intake(10, idle_s=0.0)
        t = time.monotonic()
        assert q.wait(0.05) is False and 0.04 < time.monotonic() - t < 1.0
        assert q.wait(0.0) is False

    def test_every_message_arrives_and_sleepers_wake(self) -> None:
        """Across threads nothing is lost, a worker asleep (idle) is woken at once by a put,
        and one napping (busy) picks messages up within its nap."""
        for idle_s in (0.0, 10.0):  # always asleep / always napping
            q = Intake(100_000, idle_s=idle_s)
            got: list[float] = []
            lags: list[float] = []
            worker = threading.Thread(target=_consume, args=(q, got, lags, 2_000))
            worker.start()
            for i in range(2_000):
                q.put((0, "t", b"", time.monotonic(), float(i)))
                if i % 100 == 0:
                    time.sleep(0.01)  # let the worker run dry and go to sleep (or nap)
            worker.join(10)
            assert got == [float(i) for i in range(2_000)]
            assert sorted(lags)[len(lags) // 2] < 0.5  # woken, not left to time out


# -- batched scoring -----------------------------------------------------------------------------

def _tracker_state(tr: SurpriseTracker) -> tuple[Any, ...]:
    def raw(a: np.ndarray | None) -> Any:
        return None if a is None else (a.dtype.str, a.shape, a.tobytes())
    return tr.forecast_cell, raw(tr.mean), raw(tr.logvar), raw(tr.ewma)


_LOGVAR = st.one_of(st.floats(-3, 3), st.just(-800.0))  # exp(800) overflows: a non-finite z^2


@st.composite
def _surprise_batch(draw: st.DrawFn) -> tuple[list[SurpriseTracker], list[int], list[int], Any, Any, Any]:
    """Trackers in every state (fresh, with a forecast, with an EWMA, with a forecast of another
    horizon), and a batch whose rows pick them in any order, some more than once, at lags from
    -1 to past the horizon."""
    horizon, n_ch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    trackers = []
    for _ in range(draw(st.integers(1, 4))):
        tr = SurpriseTracker(draw(st.sampled_from([0.2, 0.5, 1.0])))
        kind = draw(st.sampled_from(["fresh", "forecast", "ewma", "ewma", "other_horizon"]))
        if kind != "fresh":
            h = horizon + 1 if kind == "other_horizon" else horizon
            tr.forecast_cell = draw(st.integers(0, 5))
            tr.mean = rng.normal(size=(h, n_ch)).astype(np.float32)
            tr.logvar = rng.normal(size=(h, n_ch)).astype(np.float32)
            if kind == "ewma":
                tr.ewma = rng.exponential(size=n_ch)
        trackers.append(tr)
    rows = draw(st.lists(st.integers(0, len(trackers) - 1), min_size=1, max_size=12))
    clock = {i: t.forecast_cell if t.forecast_cell >= 0 else 3 for i, t in enumerate(trackers)}
    ends = []
    for i in rows:
        clock[i] += draw(st.sampled_from([-1, 0, 1, 1, 1, 2, horizon, horizon + 1, 7]))
        ends.append(clock[i])
    n = len(rows)
    tails = rng.normal(size=(n, horizon, n_ch))
    means = rng.normal(size=(n, horizon, n_ch)).astype(np.float32)
    logvars = np.array(draw(st.lists(_LOGVAR, min_size=n * horizon * n_ch, max_size=n * horizon * n_ch)),
                       dtype=np.float32).reshape(n, horizon, n_ch)
    return trackers, rows, ends, tails, means, logvars


class TestBatchedScoring:
    @given(batch=_surprise_batch())
    @settings(max_examples=300, deadline=None)
    def test_update_surprise_is_update_in_order(self, batch: Any) -> None:
        """`update_surprise` over a batch leaves every tracker, and returns for every row, exactly
        (bit for bit) what `SurpriseTracker.update` called row by row does."""
        trackers, rows, ends, tails, means, logvars = batch
        plain = copy.deepcopy(trackers)
        with np.errstate(over="ignore", invalid="ignore"):  # the non-finite forecasts, on purpose
            want = [plain[t].update(e, tails[i], means[i].astype(np.float32), logvars[i].astype(np.float32))
                    for i, (t, e) in enumerate(zip(rows, ends, strict=True))]
            got = update_surprise([trackers[t] for t in rows], ends, tails, means, logvars)
        assert [None if w is None else w.tobytes() for w in want] == [
            None if g is None else g.tobytes() for g in got]
        assert [_tracker_state(t) for t in trackers] == [_tracker_state(t) for t in plain]

    def test_pipeline_scores_a_batch_as_one_window_at_a_time(self, tmp_path: Path,
                                                              model_file: ModelFile) -> None:
        """Each window's surprise probability in a batch is the one `surprise_probability` gives
        for its tracker's smoothed score, as the per-window path computed it; the batch is scored
        in float64 from float32 windows."""
        cfg = _config(tmp_path, model_file.path, "last")
        cfg = cfg.model_copy(update={"windows": cfg.windows.model_copy(update={"max_assets": 3})})
        p = Pipeline(cfg, load_model(model_file.path), Metrics(CollectorRegistry()), wall=lambda: WALL)
        rng = np.random.default_rng(5)
        checked = 0
        for k in range(40):
            for asset in ("pump-1", "pump-2", "pump-3"):
                values = dict(zip(CHANNELS, rng.normal(size=3).tolist(), strict=True))
                doc = {"ts": T0 + k * PERIOD_S + 1.0, "values": values}
                assert p.ingest(1, f"multi/{asset}", json.dumps(doc).encode(), WALL, 1.0)[0] == 3
            out = p.run_batch(256)
            assert out.inputs is None or out.inputs.dtype == np.float64
            for r in out.risks:
                ewma = p.assets[r.asset].surprise.ewma
                if ewma is None:
                    assert r.doc["signals"]["surprise"] is None
                    continue
                want = surprise_probability(float(np.mean(ewma)), p.spec.surprise)
                assert r.doc["signals"]["surprise"] == round(want, 6)
                checked += 1
        assert checked > 60
