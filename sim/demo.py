"""The demo: train on simulated history, run the agent on a broker, drive a pump to failure.

`python -m sim.demo` (or `make demo`) does it all on one machine in a few minutes and
prints the alerts as a separate MQTT client receives them.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.names import BrokerURL
from sim.broker import Broker, free_port, wait_until

BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(name: str, *args: str, quiet_stdout: bool = False) -> None:
    """Run a project command in the foreground, its progress shown as it goes (`quiet_stdout`:
    its result document is not shown; the demo says what matters in a line of its own)."""
    proc = subprocess.run([str(BIN / name), *args], check=False,
                          stdout=subprocess.DEVNULL if quiet_stdout else None)
    if proc.returncode != 0:
        raise SystemExit(f"[demo] {name} {args[0]} failed with exit code {proc.returncode}")


def model_summary(path: Path) -> str:
    """One line on the trained model (`vigil-train inspect` prints all of its metadata)."""
    from agent.runtime import read_spec

    spec = read_spec(path)
    t = spec.thresholds
    return (f"model {path.name} (version {spec.version[:12]}): {len(spec.channels)} channels, "
            f"window {spec.window} x {spec.period_s:g} s, heads {', '.join(spec.heads)}; "
            f"warning at risk {t.warning:.3f}, critical at {t.critical:.3f}")


class AlertPrinter:
    """A separate MQTT client, as a SCADA or CMMS bridge would be, printing alerts."""

    def __init__(self, url: BrokerURL, prefix: str) -> None:
        self.count = 0
        self.assets: set[str] = set()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"vigil-demo-{free_port()}")
        self.client.on_connect = lambda c, *a: c.subscribe(f"{prefix}/alerts/#", qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._message
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        wait_until(self._ready.is_set, 10, what="the demo's alert subscription")

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        a = json.loads(msg.payload)
        self.count += 1
        if a["level"] != "ok":
            self.assets.add(a["asset"])
        chans = ", ".join(f"{c['channel']} {c['score']:.1f}" for c in a.get("top_channels", []))
        print(f"[alert] {a['ts']}  {a['asset']}  {a['previous_level']} -> {a['level'].upper()}  "
              f"risk {a['risk']:.3f}  (within {a['horizon_s'] / 3600:.0f} h; drivers: {chans or '-'})",
              flush=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__)
    p.add_argument("--broker", help="use this broker (mqtt://host:port) instead of a private one")
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    p.add_argument("--assets", type=int, default=4, help="live pumps (default 4)")
    p.add_argument("--fail", default="pump-002", help="the pump driven to failure")
    p.add_argument("--duration", type=float, default=60.0, help="live seconds (default 60)")
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    broker: Broker | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        if args.broker:
            url = BrokerURL.parse(args.broker)
        else:
            broker = Broker(work / "mosquitto")
            broker.start()
            url = BrokerURL.parse(broker.url)
            say(f"started a private Mosquitto at {url} (pid {broker.pid})")

        say("1/4 simulating 14 days of history for 10 pumps ...")
        run("vigil-sim", "history", "--assets", "10", "--days", "14", "--seed", "3", "--out", str(work))
        say("2/4 training the LSTM forecaster and failure head (about half a minute) ...")
        model = work / "models" / "pump.pt"
        run("vigil-train", "fit", "--history", str(work / "history.csv"),
            "--events", str(work / "events.csv"), "--epochs", "6", "--windows-per-epoch", "20000",
            "--out", str(model), quiet_stdout=True)
        say(model_summary(model))

        http_port = free_port()
        config = work / "agent.toml"
        config.write_text(
            f'[broker]\nurl = "{url}"\nclient_id = "gw-demo"\n\n[model]\npath = "models/pump.pt"\n\n'
            '[[subscriptions]]\nfilter = "plant/+/+"\ntemplate = "plant/{asset}/{channel}"\n'
            'codec = "json"\n\n[outputs]\nprefix = "vigil"\n\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n\n[state]\ndir = "state"\n')
        say(f"3/4 starting the agent: vigil-agent run --config {config}")
        log = (work / "agent.log").open("wb")
        agent = subprocess.Popen([str(BIN / "vigil-agent"), "run", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT)
        metrics = f"http://127.0.0.1:{http_port}/metrics"

        def ready() -> bool:
            assert agent is not None
            if agent.poll() is not None:
                raise SystemExit(f"[demo] the agent exited; see {work / 'agent.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(ready, 30, interval=0.2, what="the agent to be ready")
        say(f"agent ready; metrics at {metrics}, alerts on vigil/alerts/#, risk on vigil/risk/#")
        printer = AlertPrinter(url, "vigil")
        say(f"4/4 live plant: {args.assets} pumps at 1200x speed; {args.fail} is driven to failure")
        run("vigil-sim", "live", "--broker", str(url), "--assets", str(args.assets), "--speed", "1200",
            "--duration", str(args.duration), "--seed", "11", "--fail", args.fail)
        time.sleep(1.0)  # let the last windows be scored and their alerts arrive
        printer.stop()
        with urllib.request.urlopen(metrics, timeout=2) as r:
            scrape = r.read().decode()
        wanted = ("vigil_readings_accepted_total", "vigil_windows_inferred_total", "vigil_alerts_total",
                  "vigil_asset_risk{")
        say("a few metrics from " + metrics + ":")
        for line in scrape.splitlines():
            if line.startswith(wanted):
                print("    " + line)
        say(f"{printer.count} alerts received; assets alerted: {sorted(printer.assets) or 'none'}")
        say(f"files (model, history, config, agent log) are in {work}")
        return 0 if args.fail in printer.assets else 1
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
