"""What a refit costs a gateway: its time, peak memory and CPU, and the agent's ingest latency
while it runs, against the same agent with no refit (baseline) in the same run.

A simulated plant's history becomes the agent's recording and first model; a live simulated
plant then feeds the agent at a steady rate. The reading-to-risk latency (p50/p99 from
`vigil_reading_to_risk_seconds`) is measured over a window without a refit, then over the
refit the agent runs on its command (`vigil/agents/{id}/cmd/refit`, a niced child process).

    python bench/refit.py [--assets 10] [--days 7] [--window-s 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import machine_line  # noqa: E402
from sim.broker import Broker, free_port, wait_until  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "vigil_reading_to_risk_seconds_bucket"


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
    return proc


def buckets(port: int) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(BUCKET):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, int]:
    """The q-quantile (upper bucket bound) of what was observed between two scrapes, and how many."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    for le, c in zip(les, counts, strict=True):
        if total and c >= q * total:
            return le, int(total)
    return float("nan"), int(total)


def recording_from(history: Path, state: Path) -> None:
    """The simulated history as the agent's recording (its long-format Parquet layout)."""
    table = pacsv.read_csv(history)
    table = table.set_column(0, "ts", table.column("ts").cast(pa.float64()))
    out = state / "recording" / "2026-01-01"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(["ts", "asset", "channel", "value"]), out / "part-history.parquet")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=int, default=10)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--window-s", type=float, default=30.0, help="baseline measuring window (wall s)")
    p.add_argument("--speed", type=float, default=600.0, help="live plant speed (simulated s per s)")
    args = p.parse_args(argv)

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="vigil-bench-refit-") as tmp:
        work = Path(tmp)
        state = work / "state"
        run(str(BIN / "vigil-sim"), "history", "--assets", str(args.assets), "--days", str(args.days),
            "--seed", "3", "--out", str(work / "hist"), "--no-progress")
        recording_from(work / "hist" / "history.csv", state)
        (state / "events.csv").write_bytes((work / "hist" / "events.csv").read_bytes())
        model = state / "models" / "pump.pt"
        first = json.loads(run(sys.executable, "-m", "training", "refit", "--state", str(state), "--first",
                               "--out", str(model), "--quiet").stdout.strip().splitlines()[-1])
        print(f"first fit: {first['wall_s']:.1f} s, peak RSS {first['peak_rss_mib']:.0f} MiB")

        broker = Broker(work / "mosquitto")
        broker.start()
        port = free_port()
        config = work / "agent.toml"
        config.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "gw-bench"

[model]
path = "{model}"

[[subscriptions]]
filter = "plant/+/+"
template = "plant/{{asset}}/{{channel}}"

[http]
listen = "127.0.0.1:{port}"

[state]
dir = "{state}"

[record]
enabled = true

[log]
format = "json"
""")
        log = (work / "agent.log").open("wb")
        agent = subprocess.Popen([str(BIN / "vigil-agent"), "run", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT)
        sim = None
        try:
            wait_until(lambda: _ready(port), 60, what="the agent")
            sim = subprocess.Popen([str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets",
                                    str(args.assets), "--speed", str(args.speed), "--seed", "11"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(10.0)  # windows fill, latency settles
            b0 = buckets(port)
            time.sleep(args.window_s)
            b1 = buckets(port)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-refit", protocol=mqtt.MQTTv5)
            c.connect("127.0.0.1", broker.port)
            c.publish("vigil/agents/gw-bench/cmd/refit", b"{}", qos=1).wait_for_publish(10)
            c.disconnect()
            wait_until(lambda: metric(port, "vigil_refit_running") == 1, 30, what="the refit to start")
            started = time.monotonic()
            wait_until(lambda: metric(port, "vigil_refit_running") == 0, 1800, interval=0.5,
                       what="the refit to end")
            during_s = time.monotonic() - started
            b2 = buckets(port)
            # Then the accepted candidate is loaded as the shadow (checked, warmed up) and scored
            # beside the live model: measured on its own, over the same length as the baseline.
            time.sleep(args.window_s)
            b3 = buckets(port)
        finally:
            if sim is not None:
                sim.terminate()
                sim.wait(10)
            agent.terminate()
            agent.wait(15)
            broker.stop()
        lines = (state / "models" / "decisions.jsonl").read_text().splitlines()
        decisions = [json.loads(line) for line in lines]
        refit = decisions[-1]
        base50, n_base = quantile(b0, b1, 0.50)
        base99, _ = quantile(b0, b1, 0.99)
        dur50, n_dur = quantile(b1, b2, 0.50)
        dur99, _ = quantile(b1, b2, 0.99)
        print(f"refit: {refit['result']} ({refit['reason'][:80]}), {refit['wall_s']:.1f} s in the child, "
              f"{during_s:.1f} s seen by the agent, peak RSS {refit['peak_rss_mib']:.0f} MiB")
        print(f"reading-to-risk without a refit (baseline): p50 <= {base50 * 1000:.0f} ms, "
              f"p99 <= {base99 * 1000:.0f} ms over {n_base} windows")
        print(f"reading-to-risk during the refit:          p50 <= {dur50 * 1000:.0f} ms, "
              f"p99 <= {dur99 * 1000:.0f} ms over {n_dur} windows")
        print(f"p99 ratio (during / baseline): {dur99 / base99:.2f}")
        aft50, n_aft = quantile(b2, b3, 0.50)
        aft99, _ = quantile(b2, b3, 0.99)
        print(f"reading-to-risk after, shadow loaded:      p50 <= {aft50 * 1000:.0f} ms, "
              f"p99 <= {aft99 * 1000:.0f} ms over {n_aft} windows")
        print(json.dumps({"refit_wall_s": refit["wall_s"], "refit_peak_rss_mib": refit["peak_rss_mib"],
                          "p99_ms_baseline": base99 * 1000, "p99_ms_during_refit": dur99 * 1000,
                          "p99_ratio": dur99 / base99, "p99_ms_after_with_shadow": aft99 * 1000,
                          "refit_result": refit["result"]}))
    return 0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
