"""How the agent's cost grows with assets and load: 100, 1,000 and 10,000 assets.

    .venv/bin/python bench/scaling.py [--sizes 100,1000,10000] [--quick] [--plots DIR]

Per size, one agent (its own process, pinned to one core; broker, publisher and risk capture
on the other) and a private Mosquitto, json-multi messages (14 channels per asset and cell):

- windows are warmed up (one json-multi list per asset), then the agent's RSS is read: the
  memory per asset is the slope of a line through the three sizes, not one size divided;
- saturation: a backlog of ~100k messages is drained flat out (the agent paused while the
  broker queues them, then resumed), readings per CPU-second of the agent;
- latency at 30%, 50% and 70% of that rate (of the smaller of the CPU-second and wall-clock
  rates, so a shared core does not overstate it): each asset publishes one message per cell,
  the cells of all assets spread evenly over wall time; event time runs in the past (the
  skew bounds allow history), so the rate is set by the publisher, not by a 1 Hz clock. A
  reading's latency is from the moment its message is written to the broker's socket to the
  arrival of the risk message for the window it closed.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h
from bench.throughput import (
    RiskCapture,
    backlog,
    fmt,
    fresh_broker,
    profile_stop,
    start_agent,
    table,
    wait_scored,
    warm_up,
)

LOADS = (0.3, 0.5, 0.7)
T_EV = time.time() - 10 * 86_400.0  # event time of cell 0: history, well inside the skew bounds


@dataclass
class SizeResult:
    assets: int
    rss_mib: float
    readings_per_cpu_s: float
    readings_per_wall_s: float
    latency: dict[float, tuple[float, float, int]] = field(default_factory=dict)  # load: p50, p99, n
    # load: (agent CPU-seconds per wall second, mean inference batch) while publishing live
    busy: dict[float, tuple[float, float]] = field(default_factory=dict)

    @property
    def capacity(self) -> float:
        return min(self.readings_per_cpu_s, self.readings_per_wall_s)


def run_size(tmp: Path, model: Path, n: int, drain_msgs: int, live_s: float,
             checkpoint_s: float, max_batch: int, profile: Path | None = None) -> SizeResult:
    with fresh_broker(tmp, f"scale-{n}") as (broker, capture):
        agent = start_agent(tmp, broker, model, "torchscript", "json-multi", f"scale-{n}",
                            queue_size=5_000_000, checkpoint_s=checkpoint_s, max_batch=max_batch)
        pub = h.RawPublisher(broker.port, f"pub-{n}")
        try:
            warm_up(agent, pub, n, T_EV, chunk=max(25, n // 40))
            wait_scored(agent, n)
            rss = h.proc_usage(agent.pid)[0]
            cells = max(2, drain_msgs // n)
            res = drain(agent, pub, capture, n, cells)
            res.rss_mib = rss
            first = cells
            for load in LOADS:
                rate = load * res.capacity
                spy = spy_start(agent.pid, profile, f"{n}-{int(100 * load)}") if profile else None
                before, cpu0, t0 = agent.scrape(), h.cpu_seconds(agent.pid), time.monotonic()
                res.latency[load], first = live(agent, pub, capture, n, first, rate, live_s)
                after, cpu1, t1 = agent.scrape(), h.cpu_seconds(agent.pid), time.monotonic()
                profile_stop(spy)
                res.busy[load] = ((cpu1 - cpu0) / (t1 - t0), mean_batch(before, after))
        finally:
            pub.close()
            agent.stop()
    return res


def spy_start(pid: int, out: Path, name: str) -> subprocess.Popen[bytes]:
    """py-spy on the agent, idle samples included: where a thread waits, not only where it runs."""
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(h.BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "200", "--idle",
                             "--threads", "--format", "raw", "--nonblocking", "--output",
                             str(out / f"{name}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mean_batch(before: str, after: str) -> float:
    """Mean inference batch size between two scrapes."""
    name = "vigil_inference_batch_size"
    n = h.metric(after, f"{name}_count") - h.metric(before, f"{name}_count")
    return (h.metric(after, f"{name}_sum") - h.metric(before, f"{name}_sum")) / n if n else float("nan")


def drain(agent: h.AgentProc, pub: h.RawPublisher, capture: RiskCapture, n: int, cells: int) -> SizeResult:
    """Saturation: every cell of every asset queued in the broker, then processed flat out."""
    msgs = list(h.multi_messages(h.values(n, cells, seed=2), T_EV))
    packets = pub.packets(msgs, 0)
    accepted0 = agent.accepted()
    capture.expect(n * cells)
    cpu0, t0 = backlog(agent.pid, pub, packets)
    if not capture.reached.wait(600):
        raise TimeoutError(f"{n} assets: {capture.count} of {n * cells} risk messages")
    t1 = time.monotonic()
    cpu1 = h.cpu_seconds(agent.pid)
    readings = agent.accepted() - accepted0
    if readings != len(msgs) * len(h.CHANNELS):
        raise RuntimeError(f"{n} assets: {readings} of {len(msgs) * len(h.CHANNELS)} readings accepted")
    return SizeResult(n, float("nan"), readings / (cpu1 - cpu0), readings / (t1 - t0))


def live(agent: h.AgentProc, pub: h.RawPublisher, capture: RiskCapture, n: int, first: int,
         rate: float, seconds: float) -> tuple[tuple[float, float, int], int]:
    """Publish at `rate` readings/s for about `seconds` (at least 3 cells); latency quantiles."""
    per_cell_s = n * len(h.CHANNELS) / rate
    n_cells = max(3, round(seconds / per_cell_s))
    vals = h.values(n, n_cells, seed=first)
    msgs = list(h.multi_messages(vals, T_EV, first_cell=first))
    packets = pub.packets(msgs, 0)
    gap = per_cell_s / n  # wall seconds between two messages
    sent = np.zeros(len(packets))
    capture.arrivals.clear()
    capture.keep = True
    capture.expect(len(packets))
    start = time.time() + 0.2
    i = 0
    while i < len(packets):
        now = time.time()
        j = min(len(packets), int((now - start) / gap) + 1)  # the messages due by now
        if j > i:
            pub.sock.sendall(b"".join(packets[i:j]))
            sent[i:j] = time.time()
            i = j
        else:
            time.sleep(max(0.0, min(0.001, start + i * gap - now)))
    capture.reached.wait(30)
    capture.keep = False
    index = {h.asset(a): a for a in range(n)}
    lat = []
    for arrived, payload in capture.arrivals:
        doc = json.loads(payload)
        cell = round(datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp() - T_EV) - first
        k = cell * n + index[doc["asset"]]
        if 0 <= k < len(sent) and sent[k] >= start + 1.0:  # the first second settles the pace
            lat.append((arrived - sent[k]) * 1000.0)
    if len(lat) < 100:
        raise RuntimeError(f"{n} assets at {rate:.0f} readings/s: only {len(lat)} latency samples")
    q = statistics.quantiles(lat, n=100)
    return (q[49], q[98], len(lat)), first + n_cells


def plot(results: list[SizeResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    sizes = [r.assets for r in results]
    axes[0].plot(sizes, [r.readings_per_cpu_s for r in results], "o-")
    axes[0].set(xscale="log", xlabel="assets", ylabel="readings per CPU-second",
                title="Saturation throughput")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(sizes, [r.rss_mib for r in results], "o-")
    axes[1].set(xscale="log", xlabel="assets", ylabel="RSS (MiB)", title="Memory with every window full")
    for r in results:
        pct = [100 * x for x in sorted(r.latency)]
        axes[2].plot(pct, [r.latency[x][1] for x in sorted(r.latency)], "o-", label=f"{r.assets:,} p99")
        axes[2].plot(pct, [r.latency[x][0] for x in sorted(r.latency)], "x:", label=f"{r.assets:,} p50")
    axes[2].set(xlabel="load (% of saturation)", ylabel="reading -> risk (ms)", title="Latency")
    axes[2].legend(fontsize=7)
    return h.save_figure(fig, out, "scaling.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000", help="asset counts, comma-separated")
    ap.add_argument("--quick", action="store_true", help="shorter runs, noisier")
    ap.add_argument("--plots", type=Path, help="write scaling.png here")
    ap.add_argument("--checkpoint-s", type=float, default=10.0,
                    help="the agent's checkpoint interval (default 10 s, the agent's default)")
    ap.add_argument("--max-batch", type=int, default=256, help="the agent's [inference] max_batch")
    ap.add_argument("--profile", type=Path, help="py-spy profiles (idle included) of each live phase here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if h.CPU_REST in h.cpus():
        os.sched_setaffinity(0, {h.CPU_REST})
    started = time.monotonic()
    print(f"machine: {h.machine_line()}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="vigil-scaling-") as d:
        tmp = Path(d)
        model = h.build_models(tmp / "models").torchscript
        for n in sizes:
            print(f"[{time.monotonic() - started:5.0f} s] {n:,} assets ...", file=sys.stderr, flush=True)
            results.append(run_size(tmp, model, n, 50_000 if args.quick else 100_000,
                                    6.0 if args.quick else 12.0, args.checkpoint_s, args.max_batch,
                                    args.profile))
    figure = plot(results, args.plots) if args.plots else None
    return report(results, figure, time.monotonic() - started, args.quick)


def size_summary(r: SizeResult) -> dict[str, float]:
    out = {"rss_mib": round(r.rss_mib, 1), "readings_per_s": round(r.readings_per_cpu_s),
           "readings_per_s_wall": round(r.readings_per_wall_s)}
    for x in LOADS:
        out[f"p50_ms_at_{int(100 * x)}pct"] = round(r.latency[x][0], 1)
        out[f"p99_ms_at_{int(100 * x)}pct"] = round(r.latency[x][1], 1)
        out[f"cpu_busy_at_{int(100 * x)}pct"] = round(r.busy[x][0], 3)
        out[f"mean_batch_at_{int(100 * x)}pct"] = round(r.busy[x][1], 1)
    return out


def report(results: list[SizeResult], figure: Path | None, took: float, quick: bool) -> int:
    rows = [("assets", "RSS MiB", "readings/CPU-s", "readings/s (wall)",
             *[f"p50 / p99 ms at {int(100 * x)}%" for x in LOADS])]
    for r in results:
        rows.append((fmt(r.assets), f"{r.rss_mib:.0f}", fmt(r.readings_per_cpu_s), fmt(r.readings_per_wall_s),
                     *[f"{r.latency[x][0]:.1f} / {r.latency[x][1]:.1f}" for x in LOADS]))
    print(table(rows))
    print()
    print(table([("assets", *[f"agent CPU busy / mean batch at {int(100 * x)}%" for x in LOADS])]
                + [(fmt(r.assets), *[f"{100 * r.busy[x][0]:.0f}% / {r.busy[x][1]:.0f}" for x in LOADS])
                   for r in results]))
    sizes = np.array([r.assets for r in results], dtype=float)
    rss = np.array([r.rss_mib for r in results])
    kib = float(np.polyfit(sizes, rss, 1)[0] * 1024) if len(results) > 1 else float("nan")
    rates = [r.readings_per_cpu_s for r in results]
    spread = 100 * (max(rates) / min(rates) - 1)
    p99_70 = max(r.latency[0.7][1] for r in results)
    print(f"\nmemory per asset (slope): {kib:.2f} KiB (target <= 10); throughput spread "
          f"{spread:.1f}% (target <= 10%); worst p99 at 70% load {p99_70:.1f} ms (target <= 100)"
          + (f"; plot {figure}" if figure else ""))
    summary = {
        "kib_per_asset": round(kib, 2),
        "throughput_spread_pct": round(spread, 1),
        "p99_ms_at_70pct": round(p99_70, 1),
        "sizes": {str(r.assets): size_summary(r) for r in results},
        "quick": quick,
        "bench_seconds": round(took),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
