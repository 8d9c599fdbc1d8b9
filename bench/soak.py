"""A month on a gateway in minutes: the agent's RSS, file descriptors and threads over 30 days.

    .venv/bin/python bench/soak.py [--assets 1000] [--days 30] [--period-s 1800] [--quick]
                                   [--plots DIR]

A simulated plant of `--assets` assets, one json-multi message (14 channels) per asset and
sample period, `--days` of event time, is replayed through a private Mosquitto into the agent
(its own process, pinned to one core) as fast as the agent takes it: QoS 1, a bounded number
of messages in flight, so nothing waits in a queue the agent would have to drop from. On the
way the broker is restarted `--restarts` times (the agent reconnects and resubscribes; the
publisher waits for it) and the model file is replaced once (a hot-swap). The event time
starts `--days` + 1 days ago, so every reading is history within the agent's skew bounds.

A sampler reads the agent's RSS, open file descriptors and threads from /proc every
`--sample-s` seconds, beside how far the replay has got in event time. Growth is judged
after a warm-up (the first 10% of the simulated days: allocator, caches, every asset's
state created) by a least-squares line through all later samples, not by two points:
`rss_growth_pct` is the fitted rise over the rest of the run relative to the fitted level at
the end of the warm-up; `fd_growth` and `thread_growth` are the fitted rises in counts.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h

DAY = 86_400.0
WARMUP = 0.10


@dataclass
class Sample:
    wall_s: float
    day: float          # event time reached (days since the start of the replay)
    rss_mib: float
    fds: int
    threads: int


@dataclass
class Marks:
    """Event days of the disturbances, for the plot and the report."""

    restarts: list[float] = field(default_factory=list)
    swap: float | None = None


class Sampler(threading.Thread):
    """Samples /proc of `pid` every `interval` s; `day` is set by the replay as it goes."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.day = 0.0
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                rss, fds, threads = h.proc_usage(self.pid)
            except (OSError, ValueError) as exc:
                print(f"sampler: {exc!r}", file=sys.stderr)
                return
            self.samples.append(Sample(time.monotonic() - self._t0, self.day, rss, fds, threads))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def growth(samples: list[Sample], attr: str, days: float) -> tuple[float, float]:
    """(fitted rise after the warm-up, fitted level at the end of the warm-up) of `attr`."""
    warm = WARMUP * days
    xs = np.array([s.day for s in samples if s.day >= warm])
    ys = np.array([float(getattr(s, attr)) for s in samples if s.day >= warm])
    if len(xs) < 3 or np.ptp(xs) == 0:
        raise RuntimeError(f"too few samples after the warm-up to fit a line ({len(xs)})")
    slope, icpt = np.polyfit(xs, ys, 1)
    return float(slope * (days - warm)), float(icpt + slope * warm)


class Replay:
    """Publishes the plant cell by cell and keeps at most `in_flight` messages unprocessed."""

    def __init__(self, agent: h.AgentProc, broker: h.BenchBroker, n_assets: int, period_s: float,
                 t0: float, in_flight: int) -> None:
        self.agent = agent
        self.broker = broker
        self.n_assets = n_assets
        self.period_s = period_s
        self.t0 = t0
        self.in_flight = in_flight
        self.pub = h.RawPublisher(broker.port, "soak-pub")
        self.sent_readings = 0

    def cells(self, first: int, n: int, seed: int) -> None:
        vals = h.values(self.n_assets, n, seed=seed)
        msgs = list(h.multi_messages(vals, self.t0, first_cell=first, period_s=self.period_s))
        step = max(1, self.in_flight // 2)
        for i in range(0, len(msgs), step):
            part = msgs[i : i + step]
            self.pub.send(self.pub.packets(part, 1))
            self.sent_readings += len(part) * len(h.CHANNELS)
            self.wait(self.sent_readings - self.in_flight * len(h.CHANNELS))

    def wait(self, readings: float, timeout: float = 300.0) -> None:
        self.agent.wait_accepted(readings, timeout, interval=0.1)

    def restart_broker(self) -> float:
        """Stop the broker, start it again on its port; returns seconds until the agent is ready."""
        self.wait(self.sent_readings)
        self.pub.close()
        url = f"http://127.0.0.1:{self.agent.http_port}/readyz"
        self.broker.stop()
        h.wait_until(lambda: h.http_get(url, 1.0)[0] != 200, 30, interval=0.05, what="agent to notice")
        t = time.monotonic()
        self.broker.start()
        h.wait_until(lambda: h.http_get(url, 1.0)[0] == 200, 60, interval=0.05, what="agent back")
        back = time.monotonic() - t
        self.pub = h.RawPublisher(self.broker.port, "soak-pub")
        return back

    def close(self) -> None:
        self.pub.close()


def hot_swap(agent: h.AgentProc, live: Path, candidate: Path, timeout: float = 60.0) -> float:
    """Replace the model file (atomically) and wait for the agent to report a successful swap."""
    name = 'vigil_model_reloads_total{result="success"}'
    before = h.metric(agent.scrape(), name)
    t = time.monotonic()
    os.replace(candidate, live)
    h.wait_until(lambda: h.metric(agent.scrape(), name) > before, timeout, interval=0.1, what="hot-swap")
    return time.monotonic() - t


def plot(samples: list[Sample], marks: Marks, days: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    x = [s.day for s in samples]
    for ax, attr, label in zip(axes, ("rss_mib", "fds", "threads"),
                               ("RSS (MiB)", "open file descriptors", "threads"), strict=True):
        ax.plot(x, [getattr(s, attr) for s in samples], lw=1)
        ax.axvspan(0, WARMUP * days, color="0.9", label="warm-up")
        for d in marks.restarts:
            ax.axvline(d, color="tab:red", lw=0.8, ls="--")
        if marks.swap is not None:
            ax.axvline(marks.swap, color="tab:green", lw=0.8, ls="-.")
        ax.set_ylabel(label)
    axes[0].set_title("Soak: agent process over simulated days (red: broker restart, green: hot-swap)")
    axes[-1].set_xlabel("event time (days)")
    return h.save_figure(fig, out, "soak.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=int, default=1_000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--period-s", type=float, default=1_800.0, help="sample period of the plant")
    ap.add_argument("--restarts", type=int, default=3, help="broker restarts on the way")
    ap.add_argument("--sample-s", type=float, default=0.5, help="sampling interval (wall seconds)")
    ap.add_argument("--quick", action="store_true", help="10 simulated days: a shorter run")
    ap.add_argument("--plots", type=Path, help="write soak.png here")
    args = ap.parse_args()
    days = 10.0 if args.quick else args.days
    n_cells = round(days * DAY / args.period_s)
    if h.CPU_REST in h.cpus():
        os.sched_setaffinity(0, {h.CPU_REST})
    started = time.monotonic()
    print(f"machine: {h.machine_line()}", file=sys.stderr)
    print(f"{args.assets:,} assets x {n_cells:,} cells ({days:g} days at {args.period_s:g} s): "
          f"{args.assets * n_cells:,} messages, {args.assets * n_cells * len(h.CHANNELS):,} readings",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as d:
        tmp = Path(d)
        live = h.build_models(tmp / "a", period_s=args.period_s).torchscript
        candidate = h.build_models(tmp / "b", seed=1, period_s=args.period_s).torchscript
        broker = h.BenchBroker(tmp / "broker")
        broker.start()
        port = h.free_port()
        cfg = h.agent_config(tmp / "agent.toml", broker=broker, model=live, runtime="torchscript",
                             codec="json-multi", http_port=port, max_assets=args.assets,
                             queue_size=20_000, watch_s=1.0)
        agent = h.AgentProc(cfg, port, tmp / "agent.log").start()
        sampler = Sampler(agent.pid, args.sample_s)
        sampler.start()
        marks = Marks()
        restarts_at = {int(n_cells * (k + 1) / (args.restarts + 1)) for k in range(args.restarts)}
        swap_at = int(n_cells * 0.6)
        t0 = time.time() - (days + 1) * DAY
        replay = Replay(agent, broker, args.assets, args.period_s, t0, in_flight=4_000)
        back: list[float] = []
        chunk = max(1, 4_000 // args.assets)
        try:
            cell = 0
            while cell < n_cells:
                n = min(chunk, n_cells - cell)
                replay.cells(cell, n, seed=cell)
                cell += n
                sampler.day = cell * args.period_s / DAY
                if cell * 10 // n_cells > (cell - n) * 10 // n_cells:  # every tenth of the run
                    rss = sampler.samples[-1].rss_mib if sampler.samples else float("nan")
                    print(f"[{time.monotonic() - started:5.0f} s] day {sampler.day:.1f} of {days:g}, "
                          f"RSS {rss:.0f} MiB", file=sys.stderr, flush=True)
                for _ in range(sum(cell - n < r <= cell for r in restarts_at)):
                    back.append(replay.restart_broker())
                    marks.restarts.append(sampler.day)
                    print(f"[{time.monotonic() - started:5.0f} s] day {sampler.day:.1f}: broker restarted, "
                          f"agent ready again after {back[-1]:.2f} s", file=sys.stderr, flush=True)
                if cell - n < swap_at <= cell:
                    took = hot_swap(agent, live, candidate)
                    marks.swap = sampler.day
                    print(f"[{time.monotonic() - started:5.0f} s] day {sampler.day:.1f}: model hot-swapped "
                          f"in {took:.2f} s", file=sys.stderr, flush=True)
            replay.wait(replay.sent_readings)
            h.wait_until(lambda: h.metric(agent.scrape(), "vigil_windows_inferred_total")
                         >= args.assets * (n_cells - h.WINDOW), 120, interval=0.2, what="last windows")
            sampler.stop()
            text = agent.scrape()
        finally:
            sampler.stop()
            replay.close()
            agent.stop()
            broker.stop()
        figure = plot(sampler.samples, marks, days, args.plots) if args.plots else None
    return report(args, days, n_cells, sampler.samples, text, back, figure, time.monotonic() - started)


def report(args: argparse.Namespace, days: float, n_cells: int, samples: list[Sample], text: str,
           back: list[float], figure: Path | None, took: float) -> int:
    rss_rise, rss_level = growth(samples, "rss_mib", days)
    fd_rise, _ = growth(samples, "fds", days)
    th_rise, _ = growth(samples, "threads", days)
    after = [s for s in samples if s.day >= WARMUP * days]
    readings = h.metric(text, "vigil_readings_accepted_total")
    windows = h.metric(text, "vigil_windows_inferred_total")
    dropped = h.metric(text, "vigil_messages_dropped_total")
    want = args.assets * n_cells * len(h.CHANNELS)
    rows = [("measure", "after warm-up: min", "max", "fitted rise", "target"),
            ("RSS MiB", f"{min(s.rss_mib for s in after):.1f}", f"{max(s.rss_mib for s in after):.1f}",
             f"{rss_rise:+.2f} ({100 * rss_rise / rss_level:+.2f}%)", "< 5%"),
            ("open fds", str(min(s.fds for s in after)), str(max(s.fds for s in after)), f"{fd_rise:+.2f}",
             "no growth"),
            ("threads", str(min(s.threads for s in after)), str(max(s.threads for s in after)),
             f"{th_rise:+.2f}", "no growth")]
    from bench.throughput import table

    print(table(rows))
    print()
    print(f"{args.assets:,} assets, {days:g} days of event time at {args.period_s:g} s: "
          f"{readings:,.0f} of {want:,} readings accepted, {windows:,.0f} windows scored, "
          f"{dropped:.0f} messages dropped, {len(samples)} samples, broker restarts {len(back)} "
          f"(agent ready again after {', '.join(f'{b:.2f}' for b in back)} s), wall {took:.0f} s"
          + (f"; plot {figure}" if figure else ""))
    summary = {
        "rss_growth_pct": round(100 * rss_rise / rss_level, 2),
        "rss_mib_after_warmup": round(rss_level, 1),
        "fd_growth": round(fd_rise, 2),
        "thread_growth": round(th_rise, 2),
        "fds_max": max(s.fds for s in after), "threads_max": max(s.threads for s in after),
        "assets": args.assets, "days": days, "readings": int(readings), "readings_expected": want,
        "windows": int(windows), "dropped": int(dropped), "broker_restarts": len(back),
        "reconnect_s": [round(b, 2) for b in back], "samples": len(samples),
        "readings_per_s_wall": round(readings / took), "bench_seconds": round(took),
    }
    print(json.dumps(summary))
    return 0 if readings == want and not dropped else 1


if __name__ == "__main__":
    sys.exit(main())
