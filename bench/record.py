"""What `[record]` costs the ingest hot path: ns per reading with recording on and off.

    .venv/bin/python bench/record.py [--assets 200] [--cells 40] [--rounds 5]

Two pipelines with the same config (the reference model's 14 channels), one with a Recorder
writing to a temporary folder, are fed the same messages through `Pipeline.ingest` (decode,
checks, window write and, with recording, the recorder's append), in alternating rounds of
fresh event times, one reading per message (`json`) and 14 per message (`json-multi`). Each
figure is the best round (the machine may be shared). A stride of a million cells closes at
most one window per asset, so window extraction, which both sides pay alike, does not blur
the difference. "hot path" is the worker thread's time; "with writer" is the process CPU time
of all rounds plus the final flush, so it includes the writer thread's Parquet work. Pinned to
one core where allowed, so the writer competes with ingest as it would in a pinned agent.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import (
    AgentConfig,
    BrokerConfig,
    ModelConfig,
    RecordConfig,
    StateConfig,
    SubscriptionConfig,
    WindowsConfig,
)
from agent.metrics import Metrics
from agent.pipeline import Pipeline
from agent.recorder import Recorder
from agent.runtime import load_runtime
from bench import harness as h

T0 = 1_767_225_600.0
Message = tuple[str, bytes]


def config(model: Path, state: Path) -> AgentConfig:
    return AgentConfig(
        broker=BrokerConfig(client_id="bench-record"), model=ModelConfig(path=model),
        subscriptions=[SubscriptionConfig(filter="plant/+/+", template="plant/{asset}/{channel}"),
                       SubscriptionConfig(filter="multi/+", template="multi/{asset}", codec="json-multi")],
        windows=WindowsConfig(stride=1_000_000, max_future_skew_s=1e12),
        state=StateConfig(dir=state), record=RecordConfig(enabled=True))


def rounds_of(codec: str, n_assets: int, n_cells: int, rounds: int) -> Iterator[list[Message]]:
    """Per round, the messages of `n_cells` new cells for every asset (fresh event times)."""
    vals = h.values(n_assets, n_cells * rounds, seed=1)
    for r in range(rounds):
        part = vals[r * n_cells:(r + 1) * n_cells]
        if codec == "json":
            yield list(h.single_messages(part, T0, first_cell=r * n_cells))
        else:
            yield list(h.multi_messages(part, T0, first_cell=r * n_cells, prefix="multi"))


def feed(p: Pipeline, sub: int, messages: list[Message]) -> tuple[float, int]:
    """Seconds the worker spends ingesting `messages`, and the readings accepted."""
    ingest = p.ingest
    wall = T0 + 1e9
    accepted = 0
    t = time.perf_counter()
    for topic, payload in messages:
        accepted += ingest(sub, topic, payload, wall, 0.0)[0]
    return time.perf_counter() - t, accepted


def measure(codec: str, args: argparse.Namespace, models: h.Models, tmp: Path) -> dict[str, float]:
    cfg = config(models.torchscript, tmp / codec / "state")
    runtime = load_runtime(cfg.model)
    off = Pipeline(cfg, runtime, Metrics(CollectorRegistry()))
    on = Pipeline(cfg, runtime, Metrics(CollectorRegistry()))
    rec = Recorder(cfg.record, tmp / codec / "recording", runtime.spec.channels, on.metrics)
    on.recorder = rec
    rec.start()
    sub = 0 if codec == "json" else 1
    best = {"off": float("inf"), "on": float("inf")}
    cpu = {"off": 0.0, "on": 0.0}  # this (the worker) thread's CPU time
    readings = 0
    process, thread = time.process_time(), time.thread_time()
    for msgs in rounds_of(codec, args.assets, args.cells, args.rounds):
        for name, p in (("off", off), ("on", on)):
            c = time.thread_time()
            took, n = feed(p, sub, msgs)
            if name == "on":
                readings += n
            cpu[name] += time.thread_time() - c
            best[name] = min(best[name], took / n)
    rec.close(timeout=60)
    # The writer's CPU: the whole process's, less this thread's (making messages included).
    cpu["on"] += (time.process_time() - process) - (time.thread_time() - thread)
    recorded = on.metrics.registry.get_sample_value("vigil_record_readings_total")
    assert recorded == readings, (recorded, readings)  # everything accepted was written
    return {"off_ns": best["off"] * 1e9, "on_ns": best["on"] * 1e9,
            "hot_path_overhead_ns": (best["on"] - best["off"]) * 1e9, "ratio": best["on"] / best["off"],
            "cpu_off_ns": cpu["off"] / readings * 1e9, "cpu_on_ns": cpu["on"] / readings * 1e9,
            "cpu_overhead_ns": (cpu["on"] - cpu["off"]) / readings * 1e9,
            "disk_bytes_per_reading": (on.metrics.registry.get_sample_value("vigil_record_disk_bytes") or 0)
            / readings, "readings": readings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=int, default=200)
    ap.add_argument("--cells", type=int, default=40, help="cells per asset per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if h.CPU_AGENT in h.cpus():
        os.sched_setaffinity(0, {h.CPU_AGENT})
    print(f"machine: {h.machine_line()}", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-record-") as d:
        models = h.build_models(Path(d))
        for codec in ("json", "json-multi"):
            results[codec] = measure(codec, args, models, Path(d))
    rows = [("messages", "off ns/reading", "on ns/reading", "overhead ns", "on / off",
             "CPU incl. writer off / on ns", "disk bytes/reading")]
    for codec, m in results.items():
        rows.append((codec, f"{m['off_ns']:,.0f}", f"{m['on_ns']:,.0f}", f"{m['hot_path_overhead_ns']:,.0f}",
                     f"{m['ratio']:.3f}", f"{m['cpu_off_ns']:,.0f} / {m['cpu_on_ns']:,.0f}",
                     f"{m['disk_bytes_per_reading']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(json.dumps({f"{codec}_{k}": round(v, 3) for codec, m in results.items() for k, v in m.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
