"""Benchmark plumbing shared by bench/throughput.py and bench/inference.py.

A private Mosquitto with its queue limits raised, a raw-socket MQTT publisher (pre-encoded
packets, so the publisher costs next to nothing and never limits what is measured), the
reference model (2-layer, 64-unit LSTM over 30 steps of 14 channels) exported as TorchScript
and ONNX, agent configs, and per-process CPU time and peak RSS read from /proc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sim.broker import Broker  # noqa: E402
from sim.broker import free_port as free_port  # noqa: E402  (re-exported for the benchmarks)
from sim.broker import wait_until as wait_until  # noqa: E402

BIN = Path(sys.executable).parent
CHANNELS = ("bearing_temp", "vib_rms", "motor_current", "discharge_pressure", "speed",
            "suction_pressure", "flow", "oil_temp", "winding_temp", "vib_axial", "vib_radial",
            "seal_temp", "ambient_temp", "power")
WINDOW = 30
HORIZON = 5
PERIOD_S = 1.0
# Typical values and noise per channel: messages look like a plant's, and normalise to ~N(0, 1).
_MEAN = np.array([55.0, 2.0, 40.0, 6.0, 1480.0, 1.5, 120.0, 60.0, 70.0, 1.5, 1.8, 45.0, 25.0, 30.0])
_STD = np.array([2.0, 0.3, 3.0, 0.4, 10.0, 0.1, 8.0, 2.0, 3.0, 0.2, 0.2, 1.5, 2.0, 2.5])
CPU_AGENT, CPU_REST = 0, 1


# -- machine --------------------------------------------------------------------------------

def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_preexec(cpu: int | None) -> Any:
    """A preexec_fn that pins the child (and every thread it starts) to one core."""
    if cpu is None or cpu not in cpus():
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def proc_usage(pid: int) -> tuple[float, int, int]:
    """(current RSS in MiB, open file descriptors, threads) of a live process."""
    rss, threads = float("nan"), 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024.0
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def machine_line() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f} at start"


def cpu_seconds_with_children() -> float:
    """CPU seconds of this process and of its children that have ended (training's member workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# -- broker ---------------------------------------------------------------------------------

class BenchBroker(Broker):
    """Mosquitto without persistence and with queues that never drop (QoS 0 queued too)."""

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 10000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "queue_qos0_messages true\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)
        if self.proc is not None and CPU_REST in cpus():
            os.sched_setaffinity(self.proc.pid, {CPU_REST})


# -- raw MQTT publisher ---------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """One MQTT 3.1.1 PUBLISH packet."""
    body = _str(topic.encode()) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


class RawPublisher:
    """MQTT 3.1.1 over a plain socket: pre-encoded PUBLISH packets written in large chunks.

    paho would cost ~20 us of Python per message on the publishing side; this costs a memcpy,
    so the publisher never limits (or steals the core of) the consumer being measured.
    """

    def __init__(self, port: int, client_id: str = "bench-pub") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        var = _str(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 300)
        body = var + _str(client_id.encode())
        self.sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
        if self.sock.recv(4)[:1] != b"\x20":
            raise RuntimeError("broker refused the benchmark publisher")
        self._acked = 0
        self._sent_q1 = 0
        self._lock = threading.Lock()
        self._next_id = 1
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        got = 0
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            got += len(data)
            with self._lock:
                self._acked = got // 4  # only PUBACKs (4 bytes each) come back

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    def packets(self, messages: Iterable[tuple[str, bytes]], qos: int) -> list[bytes]:
        out = []
        for topic, payload in messages:
            pid = 0
            if qos:
                pid = self._next_id
                self._next_id = self._next_id % 65535 + 1
            out.append(publish_packet(topic, payload, qos, pid))
        return out

    def send(self, packets: Sequence[bytes], chunk: int = 1 << 18) -> None:
        self._sent_q1 += sum(1 for p in packets if p[0] & 0x06)
        buf = bytearray()
        for p in packets:
            buf += p
            if len(buf) >= chunk:
                self.sock.sendall(buf)
                buf.clear()
        if buf:
            self.sock.sendall(buf)

    def sync(self, timeout: float = 60.0) -> None:
        """Return once the broker has routed everything sent so far (a QoS 1 marker is acked)."""
        self._sent_q1 += 1
        want = self._sent_q1
        pid = self._next_id
        self._next_id = self._next_id % 65535 + 1
        self.sock.sendall(publish_packet("bench/marker", b"", 1, pid))
        wait_until(lambda: self.acked >= want, timeout, interval=0.005, what="broker to route")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
        self.sock.close()


# -- messages -------------------------------------------------------------------------------

def asset(i: int) -> str:
    return f"pump-{i:05d}"


def values(n_assets: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """[cells, assets, channels] of plausible readings (a slow random walk plus noise)."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.normal(0, 0.05, size=(n_cells, n_assets, len(CHANNELS))), axis=0)
    noise = rng.normal(0, 1, size=(n_cells, n_assets, len(CHANNELS)))
    return np.round(_MEAN + _STD * (drift + noise), 3)


def single_messages(vals: np.ndarray, t0: float, first_cell: int = 0,
                    prefix: str = "plant") -> Iterator[tuple[str, bytes]]:
    """One reading per message, `{prefix}/{asset}/{channel}`, in event-time order."""
    for c in range(vals.shape[0]):
        ts = f"{t0 + (first_cell + c) * PERIOD_S:.3f}"
        for a in range(vals.shape[1]):
            name = asset(a)
            for ch, v in zip(CHANNELS, vals[c, a].tolist(), strict=True):
                yield f"{prefix}/{name}/{ch}", f'{{"ts":{ts},"value":{v}}}'.encode()


def _multi_doc(ts: str, row: list[float]) -> str:
    inner = ",".join(f'"{ch}":{v}' for ch, v in zip(CHANNELS, row, strict=True))
    return f'{{"ts":{ts},"values":{{{inner}}}}}'


def multi_messages(vals: np.ndarray, t0: float, first_cell: int = 0, prefix: str = "plant",
                   period_s: float = PERIOD_S) -> Iterator[tuple[str, bytes]]:
    """One json-multi message per asset and cell (14 channels), `{prefix}/{asset}`."""
    for c in range(vals.shape[0]):
        ts = f"{t0 + (first_cell + c) * period_s:.3f}"
        for a in range(vals.shape[1]):
            yield f"{prefix}/{asset(a)}", _multi_doc(ts, vals[c, a].tolist()).encode()


def list_messages(vals: np.ndarray, t0: float, prefix: str = "warm") -> Iterator[tuple[str, bytes]]:
    """Per asset, one json-multi list payload holding every cell (fast warm-up of windows)."""
    for a in range(vals.shape[1]):
        docs = [_multi_doc(f"{t0 + c * PERIOD_S:.3f}", vals[c, a].tolist()) for c in range(vals.shape[0])]
        yield f"{prefix}/{asset(a)}", ("[" + ",".join(docs) + "]").encode()


# -- model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Models:
    torchscript: Path
    onnx: Path


def build_models(out: Path, hidden: int = 64, layers: int = 2, seed: int = 0,
                 period_s: float = PERIOD_S) -> Models:
    """The reference model (random weights: speed does not depend on them), both formats."""
    import warnings

    import torch

    from agent.spec import Combiner, ModelSpec, Normalisation, SurpriseStats, Thresholds
    from training.export import export, export_onnx
    from training.model import Forecaster, ModelConfig

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=hidden,
                                       layers=layers, fail_head=True, forecast_head=True))
    # Thresholds high enough that a random model raises (almost) no alerts: alerts are rare
    # in a plant, and the outbox (SQLite, fsync) is not what this benchmark measures.
    spec = ModelSpec(
        channels=CHANNELS, period_s=period_s, window=WINDOW, horizon=HORIZON, fail_horizon=600,
        normalisation=Normalisation(tuple(_MEAN.tolist()), tuple((_STD * 1.5).tolist())),
        heads=("forecast_mean", "forecast_logvar", "fail_prob"),
        thresholds=Thresholds(warning=0.995, critical=0.999, hysteresis=0.05, dwell=2, cooldown=30),
        surprise=SurpriseStats(ewma_alpha=0.2, quantiles=tuple(np.linspace(0.0, 50.0, 11).tolist())),
        combiner=Combiner(w_fail=0.2, w_surprise=0.2, bias=-1.0), fingerprint="bench")
    probe = np.random.default_rng(seed).normal(size=(8, WINDOW, len(CHANNELS))).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    export(model, spec, probe, out / "model.pt")
    export_onnx(model, spec, probe, out / "model.onnx")
    return Models(out / "model.pt", out / "model.onnx")


# -- the agent as a process -----------------------------------------------------------------

def agent_config(path: Path, *, broker: BenchBroker, model: Path, runtime: str, codec: str,
                 http_port: int, queue_size: int = 10_000, max_assets: int = 10_000, max_batch: int = 256,
                 client_id: str = "bench-agent", checkpoint_s: float = 10.0,
                 watch_s: float = 0.0) -> Path:
    if codec == "json":
        sub = 'filter = "plant/+/+"\ntemplate = "plant/{asset}/{channel}"\ncodec = "json"'
    else:
        sub = 'filter = "plant/+"\ntemplate = "plant/{asset}"\ncodec = "json-multi"'
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "{client_id}"

[model]
path = "{model}"
runtime = "{runtime}"
watch_interval_s = {watch_s}

[[subscriptions]]
{sub}
qos = 1

# Windows are warmed up through this one (json-multi lists); listed second, so the
# measured topics match the first subscription without a second comparison.
[[subscriptions]]
filter = "warm/+"
template = "warm/{{asset}}"
codec = "json-multi"

[windows]
max_assets = {max_assets}

[inference]
queue_size = {queue_size}
max_batch = {max_batch}

[http]
listen = "127.0.0.1:{http_port}"

[state]
dir = "{path.parent / 'state'}"
checkpoint_interval_s = {checkpoint_s}

[log]
format = "json"
level = "warning"
""")
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class AgentProc:
    """`vigil-agent run` pinned to one core; knows its start-up time."""

    config: Path
    http_port: int
    log: Path
    cpu: int | None = CPU_AGENT
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float = float("nan")

    def start(self, timeout: float = 60.0) -> AgentProc:
        t0 = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(BIN / "vigil-agent"), "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=pin_preexec(self.cpu))

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            return http_get(f"http://127.0.0.1:{self.http_port}/readyz", 1.0)[0] == 200
        wait_until(ready, timeout, interval=0.01, what="agent /readyz")
        self.startup_s = time.monotonic() - t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def scrape(self) -> str:
        return http_get(f"http://127.0.0.1:{self.http_port}/metrics")[1]

    def accepted(self) -> float:
        return metric(self.scrape(), "vigil_readings_accepted_total")

    def wait_accepted(self, n: float, timeout: float, interval: float = 0.25) -> None:
        wait_until(lambda: self.accepted() >= n, timeout, interval=interval,
                   what=f"{n:.0f} readings accepted")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def save_figure(fig: Any, out: Path, name: str) -> Path:
    """Write a matplotlib figure as `out/name` (PNG) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dump_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=lambda o: dataclasses.asdict(o))
