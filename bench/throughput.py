"""Vigil against a bare MQTT consumer (L) and a naive per-reading agent (N), in one run.

    .venv/bin/python bench/throughput.py [--quick] [--profile DIR]

Every consumer (the agent, L, N) runs as its own process pinned to core 0; the broker, the
publisher and the risk capture share core 1. Throughput is measured by draining a backlog:
the consumer is paused (SIGSTOP), the measured messages are published to the broker (queue
limits raised, QoS 0 queued too), and the consumer is resumed (SIGCONT); it then runs flat
out until the last reading is processed (the agent: its last risk message arrives). The rate
is readings per CPU-second of the consumer process (all its threads, from /proc), which on a
dedicated core equals its sustained rate; the wall-clock rate is printed beside it, since on
a shared machine other work steals the core. Windows are warmed up first (one json-multi
list per asset), so every measured cell closes a window that is scored: inference runs.

Latency is measured live at half the sustained rate: readings stamped with their publish
time, risk messages timed on arrival. Memory is the peak RSS (ru_maxrss, shutdown checkpoint
included) of an agent holding 1,000 and 10,000 assets with scored windows, per runtime, beside
its floor: a bare process that loads the same model with the same runtime and scores a batch.
Start-up is process start to /readyz OK. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import harness as h

T_BASE = time.time() - 7200.0  # event time of the first cell: history, well inside the skew bounds


# -- consumers other than the agent (run as `throughput.py --consumer ...`) -------------------

def consumer_main(args: argparse.Namespace) -> None:
    """Baseline L (json.loads only) or N (the model once per reading on a fresh window)."""
    count = 0
    expect = args.expect
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{args.consumer}", protocol=mqtt.MQTTv5)
    step: Callable[[str, bytes], None]
    if args.consumer == "limit":
        loads = json.loads
        step = lambda topic, payload: loads(payload)  # noqa: E731
    else:
        step = naive_step(Path(args.model), c.publish)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        step(msg.topic, msg.payload)  # type: ignore[arg-type]
        count += 1
        if count == expect:
            print(f"done {time.monotonic()}", flush=True)

    c.on_message = on_message
    c.on_subscribe = lambda *a: print("ready", flush=True)
    c.on_connect = lambda client, *a: client.subscribe(args.filter, qos=args.qos)
    c.connect("127.0.0.1", args.port, keepalive=300)
    c.loop_forever()


def naive_step(model: Path, publish: Callable[..., Any]) -> Callable[[str, bytes], None]:
    """What most tutorials write: per reading, rebuild the window and call the model on it."""
    import warnings
    from collections import deque

    import numpy as np
    import torch

    from agent.spec import METADATA_FILE, ModelSpec

    torch.set_num_threads(1)
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torch.jit.load(str(model), _extra_files=extra)  # type: ignore[no-untyped-call]
    spec = ModelSpec.from_json(extra[METADATA_FILE])
    index = {c: i for i, c in enumerate(spec.channels)}
    rows: dict[str, deque[list[float]]] = {}
    cells: dict[str, int] = {}

    def step(topic: str, payload: bytes) -> None:
        _, asset, channel = topic.split("/")
        doc = json.loads(payload)
        cell = int(doc["ts"] // spec.period_s)
        hist = rows.setdefault(asset, deque(maxlen=spec.window))
        if cells.get(asset) != cell:
            cells[asset] = cell
            hist.append(list(hist[-1]) if hist else [0.0] * spec.n_channels)
        hist[-1][index[channel]] = float(doc["value"])
        window = np.array([hist[0]] * (spec.window - len(hist)) + list(hist))
        x = torch.from_numpy(spec.normalise(window)[None])
        with torch.no_grad():
            out = net(x)
        risk = float(out["fail_prob"][0])
        publish(f"naive/risk/{asset}", json.dumps({"asset": asset, "risk": risk}))
    return step


@dataclass
class Consumer:
    """A baseline consumer process; reports `done` with its monotonic time on stdout."""

    kind: str
    port: int
    topic_filter: str
    qos: int
    expect: int
    model: Path | None = None
    proc: subprocess.Popen[str] | None = None
    done_at: float | None = None

    def start(self) -> Consumer:
        cmd = [sys.executable, __file__, "--consumer", self.kind, "--port", str(self.port),
               "--filter", self.topic_filter, "--qos", str(self.qos), "--expect", str(self.expect)]
        if self.model:
            cmd += ["--model", str(self.model)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=h.pin_preexec(h.CPU_AGENT))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"consumer {self.kind} did not start: {line!r}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_done(self, timeout: float) -> float:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"consumer {self.kind} not done after {timeout}s")
        line = self.proc.stdout.readline()
        return float(line.split()[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- capture of the agent's risk messages (on core 1) ------------------------------------------

class RiskCapture:
    """Counts (and, for latency, keeps) risk messages; flags when `target` have arrived."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self.target = math.inf
        self.reached = threading.Event()
        self.keep = False
        self.arrivals: list[tuple[float, bytes]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-capture", protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda client, *a: client.subscribe("vigil/risk/+", qos=0)
        self.c.connect("127.0.0.1", port, keepalive=300)
        self.c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("risk capture did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # a retained message from before: not this run's output
        self.count += 1
        if self.keep:
            self.arrivals.append((time.time(), bytes(msg.payload)))
        if self.count >= self.target:
            self.reached.set()

    def expect(self, n: int) -> None:
        self.count = 0
        self.reached.clear()
        self.target = n

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextmanager
def fresh_broker(tmp: Path, name: str) -> Iterator[tuple[h.BenchBroker, RiskCapture]]:
    """A broker of its own per run: no session or retained message of one run burdens the next."""
    broker = h.BenchBroker(tmp / f"broker-{name}")
    broker.start()
    capture = RiskCapture(broker.port)
    try:
        yield broker, capture
    finally:
        capture.stop()
        broker.stop()


# -- one measured run --------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    readings: int
    messages: int
    cpu_s: float
    wall_s: float
    windows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_cpu_s(self) -> float:
        return self.readings / self.cpu_s

    @property
    def per_wall_s(self) -> float:
        return self.readings / self.wall_s


def backlog(pid: int, pub: h.RawPublisher, packets: list[bytes]) -> tuple[float, float]:
    """Pause `pid`, queue `packets` in the broker, resume; returns (cpu, monotonic) at resume."""
    os.kill(pid, signal.SIGSTOP)
    pub.send(packets)
    pub.sync()
    time.sleep(0.2)  # the broker has routed them: let it write what fits into the socket
    cpu0 = h.cpu_seconds(pid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGCONT)
    return cpu0, t0


def profile_start(pid: int, out: Path | None, name: str) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(h.BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "250",
                             "--format", "raw", "--threads", "--gil", "--nonblocking",
                             "--output", str(out / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is not None:
        p.send_signal(signal.SIGINT)
        p.wait(30)


def run_baseline(tmp: Path, kind: str, msgs: list[tuple[str, bytes]], readings_per_msg: int,
                 qos: int, model: Path | None = None) -> Result:
    topic_filter = "plant/+/+" if msgs[0][0].count("/") == 2 else "plant/+"
    with fresh_broker(tmp, f"{kind}-{topic_filter.count('+')}-{qos}") as (broker, _):
        con = Consumer(kind, broker.port, topic_filter, qos, len(msgs), model).start()
        pub = h.RawPublisher(broker.port, f"pub-{kind}-{qos}")
        try:
            cpu0, t0 = backlog(con.pid, pub, pub.packets(msgs, qos))
            done = con.wait_done(600)
            cpu1 = h.cpu_seconds(con.pid)
        finally:
            pub.close()
            con.stop()
    name = {"limit": "L (bare paho + json.loads)", "naive": "N (naive, model per reading)"}[kind]
    return Result(name, len(msgs) * readings_per_msg, len(msgs), cpu1 - cpu0, done - t0)


def start_agent(tmp: Path, broker: h.BenchBroker, model: Path, runtime: str, codec: str, name: str,
                queue_size: int = 10_000, checkpoint_s: float = 10.0, max_batch: int = 256) -> h.AgentProc:
    """The agent pinned to core 0, ready (its start-up time measured)."""
    d = tmp / name
    d.mkdir(parents=True)
    port = h.free_port()
    cfg = h.agent_config(d / "agent.toml", broker=broker, model=model, runtime=runtime, codec=codec,
                         http_port=port, queue_size=queue_size, client_id=f"vigil-{name}",
                         checkpoint_s=checkpoint_s, max_batch=max_batch)
    return h.AgentProc(cfg, port, d / "agent.log").start()


def warm_up(agent: h.AgentProc, pub: h.RawPublisher, n_assets: int, first: float, cells: int = h.WINDOW,
            chunk: int = 250) -> int:
    """Fill every asset's window with `cells` cells ending just before `first`; returns readings."""
    vals = h.values(n_assets, cells, seed=1)
    msgs = list(h.list_messages(vals, first - cells * h.PERIOD_S))
    per_msg = cells * len(h.CHANNELS)
    base = agent.accepted()
    for i in range(0, len(msgs), chunk):
        part = msgs[i : i + chunk]
        pub.send(pub.packets(part, 1))
        # Keep the intake queue short: the agent drops what does not fit (by design).
        agent.wait_accepted(base + (i + len(part) - chunk) * per_msg, 300, interval=0.1)
    agent.wait_accepted(base + len(msgs) * per_msg, 300, interval=0.1)
    return len(msgs) * per_msg


def wait_scored(agent: h.AgentProc, n: int) -> None:
    """Wait until `n` windows are scored, and a moment more for their risk messages to pass."""
    wait_until = h.wait_until
    wait_until(lambda: h.metric(agent.scrape(), "vigil_windows_inferred_total") >= n, 120, interval=0.1,
               what=f"{n} windows scored")
    time.sleep(0.5)


def run_vigil(tmp: Path, model: Path, runtime: str, codec: str, n_assets: int, cells: int, qos: int,
              profile: Path | None) -> Result:
    name = f"{codec}-q{qos}-{runtime}"
    with fresh_broker(tmp, name) as (broker, capture):
        return _run_vigil(tmp, broker, capture, name, model, runtime, codec, n_assets, cells, qos, profile)


def _run_vigil(tmp: Path, broker: h.BenchBroker, capture: RiskCapture, name: str, model: Path, runtime: str,
               codec: str, n_assets: int, cells: int, qos: int, profile: Path | None) -> Result:
    agent = start_agent(tmp, broker, model, runtime, codec, name, queue_size=5_000_000)
    pub = h.RawPublisher(broker.port, f"pub-{name}")
    try:
        warm_up(agent, pub, n_assets, T_BASE)
        wait_scored(agent, n_assets)
        vals = h.values(n_assets, cells, seed=2)
        gen = h.single_messages if codec == "json" else h.multi_messages
        msgs = list(gen(vals, T_BASE))
        packets = pub.packets(msgs, qos)
        accepted0 = agent.accepted()
        capture.expect(n_assets * cells)
        spy = None
        if profile is not None:
            spy = profile_start(agent.pid, profile, name)
            time.sleep(1.0)
        cpu0, t0 = backlog(agent.pid, pub, packets)
        if not capture.reached.wait(600):
            raise TimeoutError(f"{name}: {capture.count} of {n_assets * cells} risk messages")
        t1 = time.monotonic()
        cpu1 = h.cpu_seconds(agent.pid)
        profile_stop(spy)
        text = agent.scrape()
        readings = int(h.metric(text, "vigil_readings_accepted_total") - accepted0)
        dropped = h.metric(text, "vigil_messages_dropped_total")
        want = len(msgs) * (1 if codec == "json" else len(h.CHANNELS))
        if readings != want or dropped:
            raise RuntimeError(f"{name}: {readings} of {want} readings accepted, {dropped} dropped")
    finally:
        pub.close()
        agent.stop()
    label = f"Vigil {'1 reading/msg' if codec == 'json' else 'json-multi 14 ch'}"
    return Result(label, readings, len(msgs), cpu1 - cpu0, t1 - t0, windows=n_assets * cells,
                  extra={"startup_s": agent.startup_s})


def run_latency(tmp: Path, model: Path, codec: str, rate: float, seconds: float,
                capacity: float) -> dict[str, Any]:
    """Publish live at `rate` readings/s (assets at 1 Hz), readings stamped with their send time."""
    with fresh_broker(tmp, f"latency-{codec}") as (broker, capture):
        return _run_latency(tmp, broker, capture, model, codec, rate, seconds, capacity)


def _run_latency(tmp: Path, broker: h.BenchBroker, capture: RiskCapture, model: Path, codec: str,
                 rate: float, seconds: float, capacity: float) -> dict[str, Any]:
    per_msg = 1 if codec == "json" else len(h.CHANNELS)
    n_assets = max(1, round(rate / len(h.CHANNELS)))
    name = f"latency-{codec}"
    agent = start_agent(tmp, broker, model, "torchscript", codec, name)
    pub = h.RawPublisher(broker.port, f"pub-{name}")
    try:
        # The live stream's first cell: windows are warmed up (and the stream encoded) before it.
        lead = 4.0 + 1.5 * n_assets * h.WINDOW * len(h.CHANNELS) / capacity + n_assets * seconds * 3e-5
        start = math.ceil(time.time() + lead)
        warm_up(agent, pub, n_assets, start)
        wait_scored(agent, n_assets)
        n_cells = int(seconds)
        vals = h.values(n_assets, n_cells, seed=3).tolist()
        per_cell = n_assets * len(h.CHANNELS) // per_msg
        sched: list[float] = []
        packets: list[bytes] = []
        for c in range(n_cells):
            k = 0
            for a in range(n_assets):
                name_a = h.asset(a)
                if codec == "json":
                    for ch, v in zip(h.CHANNELS, vals[c][a], strict=True):
                        t = start + c + k / per_cell
                        ts = math.floor(t * 1000) / 1000
                        packets.append(h.publish_packet(f"plant/{name_a}/{ch}",
                                                        f'{{"ts":{ts:.3f},"value":{v}}}'.encode()))
                        sched.append(t)
                        k += 1
                else:
                    t = start + c + k / per_cell
                    ts = math.floor(t * 1000) / 1000
                    packets.append(h.publish_packet(f"plant/{name_a}",
                                                    h._multi_doc(f"{ts:.3f}", vals[c][a]).encode()))
                    sched.append(t)
                    k += 1
        before = agent.scrape()  # the warm-up's own latencies are left out of the agent's histogram
        capture.arrivals.clear()
        capture.keep = True
        capture.expect(n_assets * n_cells)
        if time.time() > start:
            raise RuntimeError(f"{name}: warm-up took longer than planned ({lead:.1f} s)")
        while time.time() < start:
            time.sleep(0.01)
        i, n = 0, len(packets)
        while i < n:
            now = time.time()
            j = i
            while j < n and sched[j] <= now:
                j += 1
            if j > i:
                pub.sock.sendall(b"".join(packets[i:j]))
                i = j
            else:
                time.sleep(min(0.0005, sched[i] - now))
        capture.reached.wait(10)
        time.sleep(0.5)
        capture.keep = False
        text = agent.scrape()
        dropped = h.metric(text, "vigil_messages_dropped_total")
        inside = histogram_quantiles(text, "vigil_reading_to_risk_seconds", (0.5, 0.99), before)
    finally:
        pub.close()
        agent.stop()
    lat = []
    for arrived, payload in capture.arrivals:
        doc = json.loads(payload)
        ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
        if ts >= start + 2:  # the first two seconds warm caches and the allocator
            lat.append((arrived - ts) * 1000.0)
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    return {"codec": codec, "rate": n_assets * len(h.CHANNELS), "assets": n_assets, "samples": len(lat),
            "expected": n_assets * (n_cells - 2), "p50_ms": q[49], "p99_ms": q[98],
            "max_ms": lat[-1] if lat else float("nan"), "dropped": dropped,
            "agent_p50_ms": inside[0] * 1000.0, "agent_p99_ms": inside[1] * 1000.0}


def histogram_quantiles(text: str, name: str, qs: tuple[float, ...], since: str = "") -> list[float]:
    """Quantiles of a Prometheus histogram from a scrape (less an earlier scrape), interpolated
    within buckets."""
    def counts(scrape: str) -> dict[float, float]:
        out = {}
        for line in scrape.splitlines():
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[math.inf if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        return out

    now, then = counts(text), counts(since)
    buckets = [(le, n - then.get(le, 0.0)) for le, n in sorted(now.items())]
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in qs:
        want, lo, below = q * total, 0.0, 0.0
        for le, count in buckets:
            if count >= want and count > below:
                out.append(lo + (min(le, lo * 2 or le) - lo) * (want - below) / (count - below)
                           if math.isinf(le) else lo + (le - lo) * (want - below) / (count - below))
                break
            lo, below = le, count
        else:
            out.append(float("nan"))
    return out


def run_memory(tmp: Path, model: Path, runtime: str, n_assets: int) -> dict[str, Any]:
    """Peak RSS of an agent holding `n_assets` assets, each with a scored window."""
    with fresh_broker(tmp, f"memory-{runtime}-{n_assets}") as (broker, capture):
        return _run_memory(tmp, broker, capture, model, runtime, n_assets)


def _run_memory(tmp: Path, broker: h.BenchBroker, capture: RiskCapture, model: Path, runtime: str,
                n_assets: int) -> dict[str, Any]:
    name = f"memory-{runtime}-{n_assets}"
    agent = start_agent(tmp, broker, model, runtime, "json-multi", name, checkpoint_s=2.0)
    pub = h.RawPublisher(broker.port, f"pub-{name}")
    try:
        capture.expect(2 * n_assets)
        # Small chunks: what waits in the intake queue is the benchmark's doing, not the agent's.
        warm_up(agent, pub, n_assets, T_BASE, cells=h.WINDOW + 1, chunk=max(25, n_assets // 40))
        capture.reached.wait(60)
        scored = h.metric(agent.scrape(), "vigil_windows_inferred_total")
        time.sleep(2.5)  # a periodic checkpoint (every 2 s here) of every asset: counted
        rss_running = h.peak_rss_mib(agent.pid)
    finally:
        pub.close()
    assert agent.proc is not None
    # The shutdown checkpoint writes every asset: counted too. VmHWM is read until the process
    # is gone (ru_maxrss would count the benchmark's own memory, inherited at fork).
    agent.proc.send_signal(signal.SIGTERM)
    peak = rss_running
    while agent.proc.poll() is None:
        try:
            peak = max(peak, h.peak_rss_mib(agent.pid))
        except (OSError, ValueError):
            break
        time.sleep(0.002)
    agent.proc.wait(10)
    return {"runtime": runtime, "assets": n_assets, "windows_scored": scored, "peak_rss_mib": peak,
            "rss_serving_mib": rss_running, "startup_s": agent.startup_s}


FLOOR = """
import sys
from pathlib import Path
import numpy as np
if sys.argv[2] == "onnx":
    from agent.runtime_onnx import load_onnx as load
else:
    from agent.runtime import load_model as load
rt = load(Path(sys.argv[1]), threads=1)
rt.infer(np.zeros((256, rt.spec.window, rt.spec.n_channels), dtype=np.float32))
hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
print(int(hwm[0].split()[1]) / 1024.0)
"""


def runtime_floor(model: Path, runtime: str) -> float:
    """Peak RSS (MiB) of a bare process that loads the model with the agent's runtime and scores
    one batch of 256: what any agent on this machine pays before it holds a single asset."""
    out = subprocess.run([sys.executable, "-c", FLOOR, str(model), runtime], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


# -- the report --------------------------------------------------------------------------------

def fmt(v: float) -> str:
    return f"{v:,.0f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (about half the time), noisier")
    ap.add_argument("--profile", type=Path, help="write py-spy raw profiles of the measured agent runs here")
    ap.add_argument("--consumer", choices=["limit", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--filter", help=argparse.SUPPRESS)
    ap.add_argument("--qos", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.consumer:
        consumer_main(args)
        return 0
    if h.CPU_REST in h.cpus():
        os.sched_setaffinity(0, {h.CPU_REST})
    quick = args.quick
    single_assets, single_cells = 200, (36 if quick else 71)      # ~100k / ~200k messages
    multi_assets, multi_cells = 10_000, (5 if quick else 10)       # 50k / 100k messages
    naive_msgs = 3_000 if quick else 6_000
    started = time.monotonic()

    def step(what: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {what} ...", file=sys.stderr, flush=True)

    print(f"machine: {h.machine_line()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as d:
        tmp = Path(d)
        print("building the reference model (TorchScript + ONNX) ...", file=sys.stderr)
        models = h.build_models(tmp / "models")
        res: dict[str, Result] = {}
        single = list(h.single_messages(h.values(single_assets, single_cells, seed=2), T_BASE))
        multi = list(h.multi_messages(h.values(multi_assets, multi_cells, seed=2), T_BASE))
        for qos in (0, 1):
            step(f"L, 1 reading/msg, QoS {qos}")
            res[f"L_single_q{qos}"] = run_baseline(tmp, "limit", single, 1, qos)
        step("L, json-multi, QoS 0")
        res["L_multi_q0"] = run_baseline(tmp, "limit", multi, len(h.CHANNELS), 0)
        step("N, 1 reading/msg, QoS 0")
        res["N_single_q0"] = run_baseline(tmp, "naive", single[:naive_msgs], 1, 0, models.torchscript)
        for qos in (0, 1):
            step(f"Vigil, 1 reading/msg, QoS {qos}")
            res[f"V_single_q{qos}"] = run_vigil(tmp, models.torchscript, "torchscript", "json",
                                                single_assets, single_cells, qos,
                                                args.profile if qos == 0 else None)
        for qos in (0, 1):
            step(f"Vigil, json-multi, QoS {qos}")
            res[f"V_multi_q{qos}"] = run_vigil(tmp, models.torchscript, "torchscript", "json-multi",
                                               multi_assets, multi_cells, qos,
                                               args.profile if qos == 0 else None)
        # Half the rate sustained here and now (wall clock): on a shared core the agent gets
        # less than a whole CPU-second per second, and latency is about what it does get.
        cap_single = min(res["V_single_q0"].per_cpu_s, res["V_single_q0"].per_wall_s)
        cap_multi = min(res["V_multi_q0"].per_cpu_s, res["V_multi_q0"].per_wall_s)
        step(f"latency, 1 reading/msg at {fmt(cap_single / 2)} readings/s")
        lat_single = run_latency(tmp, models.torchscript, "json", cap_single / 2, 8 if quick else 12,
                                 cap_multi)
        step(f"latency, json-multi at {fmt(cap_multi / 2)} readings/s")
        lat_multi = run_latency(tmp, models.torchscript, "json-multi", cap_multi / 2, 6 if quick else 8,
                                cap_multi)
        mem = {}
        for n in (1_000, 10_000):
            for rt, path in (("torchscript", models.torchscript), ("onnx", models.onnx)):
                step(f"memory, {rt}, {n:,} assets")
                mem[(rt, n)] = run_memory(tmp, path, rt, n)
        floors = {rt: runtime_floor(path, rt) for rt, path in (("torchscript", models.torchscript),
                                                               ("onnx", models.onnx))}
    return report(res, lat_single, lat_multi, mem, floors, time.monotonic() - started, quick)


def report(res: dict[str, Result], lat_single: dict[str, Any], lat_multi: dict[str, Any],
           mem: dict[tuple[str, int], dict[str, Any]], floors: dict[str, float], took: float,
           quick: bool) -> int:
    lim = {"single": res["L_single_q0"], "multi": res["L_multi_q0"]}
    rows = [("run", "readings/CPU-s", "readings/s (wall)", "msgs/CPU-s", "windows/CPU-s",
             "vs L (same msgs, QoS)", "vs N")]
    naive = res["N_single_q0"].per_cpu_s
    for key, r in res.items():
        kind = "single" if "single" in key else "multi"
        q = key[-1]
        base = res.get(f"L_{kind}_q{q}", lim[kind])
        rows.append((f"{r.name}, QoS {q}", fmt(r.per_cpu_s), fmt(r.per_wall_s), fmt(r.messages / r.cpu_s),
                     fmt(r.windows / r.cpu_s) if r.windows else "-",
                     f"{r.messages / r.cpu_s / (base.messages / base.cpu_s):.2f}x" if key.startswith("V")
                     else "-",
                     f"{r.per_cpu_s / naive:.1f}x" if key.startswith("V") and kind == "single" else "-"))
    print(table(rows))
    print()
    print(table([("latency (publish -> risk)", "rate (readings/s)", "assets @ 1 Hz", "p50 ms", "p99 ms",
                  "max ms", "in the agent p50 / p99 ms", "scored/expected"),
                 *[(f"Vigil {x['codec']}, QoS 0", fmt(x["rate"]), fmt(x["assets"]), f"{x['p50_ms']:.1f}",
                    f"{x['p99_ms']:.1f}", f"{x['max_ms']:.1f}",
                    f"{x['agent_p50_ms']:.1f} / {x['agent_p99_ms']:.1f}", f"{x['samples']}/{x['expected']}")
                   for x in (lat_single, lat_multi)]]))
    print()
    print(table([("memory", "assets", "peak RSS MiB (with shutdown)", "peak RSS MiB (serving)",
                  "floor MiB (runtime + model, no agent)", "above floor", "start-up s"),
                 *[(m["runtime"], fmt(m["assets"]), f"{m['peak_rss_mib']:.0f}", f"{m['rss_serving_mib']:.0f}",
                    f"{floors[m['runtime']]:.0f}", f"{m['peak_rss_mib'] - floors[m['runtime']]:+.0f}",
                    f"{m['startup_s']:.2f}") for m in mem.values()]]))
    single, multi = res["V_single_q0"], res["V_multi_q0"]
    summary = {
        "single_qos0_ratio_to_limit": round(single.messages / single.cpu_s
                                            / (lim["single"].messages / lim["single"].cpu_s), 3),
        "single_qos1_ratio_to_limit": round(res["V_single_q1"].messages / res["V_single_q1"].cpu_s
                                            / (res["L_single_q1"].messages / res["L_single_q1"].cpu_s), 3),
        "single_qos0_readings_per_s": round(single.per_cpu_s),
        "single_qos0_readings_per_s_wall": round(single.per_wall_s),
        "limit_qos0_msgs_per_s": round(lim["single"].messages / lim["single"].cpu_s),
        "limit_qos1_msgs_per_s": round(res["L_single_q1"].messages / res["L_single_q1"].cpu_s),
        "multi_qos0_readings_per_s": round(multi.per_cpu_s),
        "multi_qos0_readings_per_s_wall": round(multi.per_wall_s),
        "multi_qos1_readings_per_s": round(res["V_multi_q1"].per_cpu_s),
        "multi_qos0_windows_per_s": round(multi.windows / multi.cpu_s),
        "naive_readings_per_s": round(naive),
        "speedup_vs_naive": round(single.per_cpu_s / naive, 1),
        # N per reading costs the same whatever the payload (a model call per reading).
        "speedup_vs_naive_multi": round(multi.per_cpu_s / naive, 1),
        "p50_latency_ms": round(lat_single["p50_ms"], 2),
        "p99_latency_ms": round(lat_single["p99_ms"], 2),
        "p99_latency_ms_multi": round(lat_multi["p99_ms"], 2),
        "p99_latency_ms_in_agent": round(lat_single["agent_p99_ms"], 2),
        "p99_latency_ms_multi_in_agent": round(lat_multi["agent_p99_ms"], 2),
        "rss_mib_1k_torchscript": round(mem[("torchscript", 1_000)]["peak_rss_mib"], 1),
        "rss_mib_1k_onnx": round(mem[("onnx", 1_000)]["peak_rss_mib"], 1),
        "rss_mib_10k_torchscript": round(mem[("torchscript", 10_000)]["peak_rss_mib"], 1),
        "rss_mib_10k_onnx": round(mem[("onnx", 10_000)]["peak_rss_mib"], 1),
        "rss_mib_floor_torchscript": round(floors["torchscript"], 1),
        "rss_mib_floor_onnx": round(floors["onnx"], 1),
        "startup_s": round(statistics.median(
            m["startup_s"] for m in mem.values() if m["runtime"] == "onnx"), 2),
        "startup_s_torchscript": round(statistics.median(
            m["startup_s"] for m in mem.values() if m["runtime"] == "torchscript"), 2),
        "quick": quick,
        "bench_seconds": round(took),
    }
    print()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
