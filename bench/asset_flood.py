"""A flood of distinct asset ids: /metrics size and the agent's RSS, bounded per-asset series vs all.

    .venv/bin/python bench/asset_flood.py [--assets 100000] [--max-assets 10000] [--settle-s 30]
                                          [--limit N] [--settings all,top]

For each `[metrics] per_asset` setting (default: `all` as the baseline, then `top` with its
default limit, or `--limit`), a private Mosquitto (explicit queue limits, no persistence) and
the agent (its own process, pinned to one core, a tiny 3-channel model) are started afresh.
Each of `--assets` distinct asset ids then publishes one json-multi message holding a whole
window of cells (QoS 1, loopback), so every asset the agent takes (up to `[windows]
max_assets`) is scored once and the rest are refused as `asset_limit`. Messages go out in
chunks, each sent once the agent has accounted for the one before (accepted, rejected or
dropped readings), so the flood runs as fast as the agent takes it and nothing waits in an
unbounded queue.

Measured per setting: the series (sample lines) and bytes of one /metrics scrape, and the
agent's RSS (VmRSS in /proc/PID/status), before the flood, right after it (every message
accounted for and every held asset scored) and after `--settle-s` more seconds with no input
(sampled every second: the largest value is reported too). The table compares each setting
with the first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h

CHANNELS = ("temp", "vib", "press")
WINDOW = 8
PERIOD_S = 60.0
CHUNK = 5_000  # messages per chunk: half the agent's intake queue (10,000)
REASONS = ("malformed", "payload_size", "topic", "name", "type", "nonfinite", "ts", "future",
           "too_old", "late", "duplicate", "unknown_channel", "asset_limit")


@dataclass
class Run:
    setting: str
    assets_sent: int
    assets_held: int
    flood_s: float
    series_before: int
    series_after: int
    bytes_before: int
    bytes_after: int
    rss_before_mib: float
    rss_after_mib: float
    rss_settled_mib: float
    rss_settle_max_mib: float


def build_model(out: Path) -> Path:
    """A tiny seeded LSTM (3 channels, window 8, hidden 8): the flood measures the agent, not inference."""
    import torch

    from agent.spec import Combiner, ModelSpec, Normalisation, SurpriseStats, Thresholds
    from training.export import export
    from training.model import Forecaster, ModelConfig

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=2, hidden=8, fail_head=True))
    spec = ModelSpec(
        channels=CHANNELS, period_s=PERIOD_S, window=WINDOW, horizon=2, fail_horizon=6,
        normalisation=Normalisation(mean=(0.0,) * 3, std=(1.0,) * 3),
        heads=("forecast_mean", "forecast_logvar", "fail_prob"),
        thresholds=Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=1, cooldown=5),
        surprise=SurpriseStats(ewma_alpha=0.2, quantiles=tuple(np.linspace(0.0, 4.0, 11).tolist())),
        combiner=Combiner(w_fail=1.0, w_surprise=0.5, bias=0.0), fingerprint="bench-flood")
    probe = np.random.default_rng(0).normal(size=(4, WINDOW, len(CHANNELS))).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    export(model, spec, probe, out / "tiny.pt")
    return out / "tiny.pt"


def config(path: Path, broker: h.BenchBroker, model: Path, port: int, max_assets: int,
           setting: str, limit: int | None) -> Path:
    metrics = f'per_asset = "{setting}"' + (f"\nper_asset_limit = {limit}" if limit else "")
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "bench-flood"

[model]
path = "{model}"
watch_interval_s = 0

[[subscriptions]]
filter = "flood/+"
template = "flood/{{asset}}"
codec = "json-multi"
qos = 1

[windows]
max_assets = {max_assets}

[http]
listen = "127.0.0.1:{port}"

[state]
dir = "{path.parent / 'state'}"

[metrics]
{metrics}

[log]
format = "json"
level = "error"
""")
    return path


def message(i: int, t0: float) -> tuple[str, bytes]:
    """One asset's whole window in one json-multi message; values differ by asset, so risks do."""
    base = (i % 97) / 10.0
    cells = ",".join(
        f'{{"ts":{t0 + k * PERIOD_S:.0f},"values":{{"temp":{base + 0.1 * k:.2f},'
        f'"vib":{base * 0.5:.2f},"press":{1.0 + 0.01 * k:.2f}}}}}' for k in range(WINDOW))
    return f"flood/asset-{i:06d}", f"[{cells}]".encode()


def samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def rss_mib(pid: int) -> float:
    return h.proc_usage(pid)[0]


def accounted(text: str, per_message: int) -> float:
    """Messages the agent has finished with: readings accepted or rejected, and dropped messages."""
    readings = h.metric(text, "vigil_readings_accepted_total") + sum(
        h.metric(text, f'vigil_readings_rejected_total{{reason="{r}"}}') for r in REASONS)
    return readings / per_message + h.metric(text, "vigil_messages_dropped_total")


def run(tmp: Path, model: Path, setting: str, limit: int | None, n: int, max_assets: int,
        settle_s: float) -> Run:
    d = tmp / setting
    broker = h.BenchBroker(d / "broker")
    broker.start()
    agent = None
    try:
        port = h.free_port()
        cfg = config(d / "agent.toml", broker, model, port, max_assets, setting, limit)
        agent = h.AgentProc(cfg, port, d / "agent.log").start()
        pid = agent.pid
        before = agent.scrape()
        rss_before = rss_mib(pid)
        pub = h.RawPublisher(broker.port, client_id=f"flood-{setting}")
        t0 = time.time() - 2 * WINDOW * PERIOD_S  # the window ends a cell or two before now
        per_message = WINDOW * len(CHANNELS)
        started = time.monotonic()
        for first in range(0, n, CHUNK):
            batch = [message(i, t0) for i in range(first, min(first + CHUNK, n))]
            pub.send(pub.packets(batch, qos=1))
            pub.sync()
            done = first + len(batch)
            h.wait_until(lambda done=done: accounted(agent.scrape(), per_message) >= done, 120,
                         interval=0.25, what=f"{done:,} messages accounted for")
        held = min(n, max_assets)
        h.wait_until(lambda: h.metric(agent.scrape(), "vigil_windows_inferred_total") >= held, 120,
                     interval=0.1, what="every held asset scored")
        flood_s = time.monotonic() - started
        pub.close()
        after = agent.scrape()
        rss_after = rss_mib(pid)
        settle: list[float] = []
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            time.sleep(1.0)  # sampling RSS while the agent idles: the wait is the measurement
            settle.append(rss_mib(pid))
        return Run(setting if limit is None or setting == "all" else f"{setting} {limit}", n,
                   int(h.metric(after, "vigil_assets")), flood_s, samples(before), samples(after),
                   len(before.encode()), len(after.encode()), rss_before, rss_after,
                   settle[-1] if settle else rss_after, max(settle, default=rss_after))
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()


def report(runs: list[Run]) -> None:
    base = runs[0]
    head = ("setting", "held", "flood s", "series before", "series after", "KB before", "KB after",
            "RSS before", "RSS after", "RSS settled", "RSS growth")
    rows = [head]
    for r in runs:
        rows.append((r.setting, f"{r.assets_held:,}", f"{r.flood_s:.0f}", f"{r.series_before:,}",
                     f"{r.series_after:,}", f"{r.bytes_before / 1000:.0f}", f"{r.bytes_after / 1000:.0f}",
                     f"{r.rss_before_mib:.0f} MiB", f"{r.rss_after_mib:.0f} MiB",
                     f"{r.rss_settled_mib:.0f} MiB", f"{r.rss_settled_mib - r.rss_before_mib:+.0f} MiB"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for r in runs[1:]:
        grow_base = base.rss_settled_mib - base.rss_before_mib
        grow = r.rss_settled_mib - r.rss_before_mib
        print(f"{r.setting} / {base.setting}: series {r.series_after / base.series_after:.3f}, "
              f"bytes {r.bytes_after / base.bytes_after:.3f}, RSS after settling "
              f"{r.rss_settled_mib / base.rss_settled_mib:.3f}, RSS growth "
              f"{grow / grow_base if grow_base else float('nan'):.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=int, default=100_000, help="distinct asset ids in the flood")
    ap.add_argument("--max-assets", type=int, default=10_000, help="the agent's [windows] max_assets")
    ap.add_argument("--settle-s", type=float, default=30.0, help="idle seconds after the flood")
    ap.add_argument("--settings", default="all,top", help="[metrics] per_asset values, in order")
    ap.add_argument("--limit", type=int, help="[metrics] per_asset_limit (default: the agent's)")
    args = ap.parse_args()
    print(f"machine: {h.machine_line()}", file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vigil-flood-") as t:
        tmp = Path(t)
        model = build_model(tmp / "model")
        for setting in args.settings.split(","):
            print(f"{setting}: flooding {args.assets:,} asset ids ...", file=sys.stderr, flush=True)
            runs.append(run(tmp, model, setting, args.limit, args.assets, args.max_assets, args.settle_s))
    report(runs)
    print(json.dumps([asdict(r) for r in runs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
