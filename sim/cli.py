"""The `vigil-sim` command: history files, live MQTT publishing, and replay of a history file."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import structlog

from agent.errors import ConfigError, DataError, VigilError
from agent.names import BrokerURL
from sim.history import FORMATS, PARTITIONS, write_history
from sim.live import DEFAULT_FAIL_WITHIN_S, LiveOptions, run_live
from sim.plant import Event, PlantConfig
from sim.publisher import DEFAULT_WINDOW, PublisherOptions, default_client_id
from sim.replay import CODECS, ReplayOptions, run_replay
from sim.timestamps import DEFAULT_START_TS, format_rfc3339, parse_time

PROG = "vigil-sim"
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """Bad command line; main() turns it into one line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage and exits; we want one line and main() to decide.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Run vigil-sim with `argv` (default: sys.argv[1:]); return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version exit through here
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    _configure_logging()
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except (ConfigError, DataError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except VigilError as exc:  # BrokerError and the like: the run itself failed
        return _fail(str(exc), EXIT_RUNTIME)
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_RUNTIME)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(reason: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(reason.split())}\n")
    return code


# --- subcommands -------------------------------------------------------------------------


def _cmd_history(args: argparse.Namespace) -> int:
    cfg = PlantConfig(n_assets=args.assets, period_s=args.period, seed=args.seed,
                      operating_points=args.operating_points)
    progress = False if args.no_progress else None
    history, events = write_history(
        cfg, args.days, Path(args.out), start_ts=args.start, fmt=args.format, progress=progress,
        partition=args.partition,
    )
    print(f"{PROG} history: wrote {history} and {events}")
    return EXIT_OK


def _cmd_live(args: argparse.Namespace) -> int:
    cfg = PlantConfig(n_assets=args.assets, period_s=args.period, seed=args.seed,
                      operating_points=args.operating_points)
    opts = LiveOptions(
        topic_prefix=args.topic_prefix,
        speed=args.speed,
        start_ts=args.start,
        duration_s=args.duration,
        fail=tuple(args.fail),
        fail_within_s=args.fail_within,
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        summary = run_live(cfg, _publisher_options(args, "live"), opts, stop, on_event=_show_event)
    failures = summary.failures
    failed = f" ({', '.join(failures)})" if failures else ""
    span = ""
    if summary.end_ts is not None:
        start, end = format_rfc3339(summary.start_ts), format_rfc3339(summary.end_ts)
        span = f", simulated {start} .. {end}"
    print(
        f"{PROG} live: {summary.published} messages published, {summary.acked} acknowledged, "
        f"{len(failures)} failures{failed}{span}",
        flush=True,
    )
    if not summary.all_acked:
        unacked = summary.published - summary.acked
        return _fail(f"{unacked} messages were not acknowledged by the broker", EXIT_RUNTIME)
    return EXIT_OK


def _show_event(event: Event) -> None:
    ts, asset, name = event
    print(f"{format_rfc3339(ts)} {asset} {name}", flush=True)


def _cmd_replay(args: argparse.Namespace) -> int:
    opts = ReplayOptions(
        topic_prefix=args.topic_prefix,
        codec=args.codec,
        speed=args.speed,
        ack_timeout_s=args.ack_timeout,
        progress=False if args.no_progress else None,
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        summary = run_replay(Path(args.path), _publisher_options(args, "replay"), opts, stop)
    print(f"{PROG} replay: {summary.describe()}", flush=True)
    if not summary.all_acked:
        unacked = summary.published - summary.acked
        return _fail(
            f"{unacked} messages were not acknowledged within {args.ack_timeout:g} s",
            EXIT_RUNTIME,
        )
    if summary.interrupted:
        return _fail(f"interrupted after {summary.rows} rows", EXIT_RUNTIME)
    return EXIT_OK


def _cmd_sparkplug(args: argparse.Namespace) -> int:
    # Imported here: the protobuf runtime is needed by this subcommand only.
    from sim.sparkplug import SparkplugOptions, run_sparkplug

    cfg = PlantConfig(n_assets=args.assets, period_s=args.period, seed=args.seed,
                      operating_points=args.operating_points)
    opts = SparkplugOptions(
        broker=args.broker,
        client_id=args.client_id or default_client_id("sparkplug"),
        group=args.group,
        node=args.node,
        speed=args.speed,
        start_ts=args.start,
        duration_s=args.duration,
        fail=tuple(args.fail),
        fail_within_s=args.fail_within,
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        summary = run_sparkplug(cfg, opts, stop, on_event=_show_event)
    failures = summary.failures
    failed = f" ({', '.join(failures)})" if failures else ""
    print(
        f"{PROG} sparkplug: {summary.published} messages published as spBv1.0/{args.group}/*/"
        f"{args.node}, {summary.births} birth sequences, {len(failures)} failures{failed}",
        flush=True,
    )
    return EXIT_OK


def _publisher_options(args: argparse.Namespace, role: str) -> PublisherOptions:
    return PublisherOptions(
        broker=args.broker,
        client_id=args.client_id or default_client_id(role),
        qos=args.qos,
        window=DEFAULT_WINDOW,
    )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` so the run ends cleanly and still waits for its acks."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _configure_logging() -> None:
    # Logs go to stderr: stdout carries the events and summary a demo shows. The stream is
    # looked up per call, so a replaced sys.stderr (tests, redirection) is honoured.
    if structlog.is_configured():
        return
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
    )


# --- argument parsing --------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("expected a number, got NaN")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _speed(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (or inf), got {text!r}")
    return value


def _replay_speed(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _broker(text: str) -> BrokerURL:
    try:
        return BrokerURL.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_plant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--assets", type=_positive_int, required=True,
                   metavar="N", help="number of pumps (pump-001, pump-002, ...)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the "
                   "same plant (default 0)")
    p.add_argument("--period", type=_positive, default=60.0, metavar="S",
                   help="sample period in seconds (default 60)")
    p.add_argument("--operating-points", type=int, default=0, metavar="K",
                   help="run each pump at K fixed load levels (operating conditions that set the "
                   "sensor levels: train with --regime-channels speed); default 0: any level")


def _add_mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", type=_broker, required=True, metavar="URL",
                   help="mqtt://host:port or mqtts://host:port (TLS with system CAs)")
    p.add_argument("--topic-prefix", default="plant", metavar="PREFIX",
                   help="topics are PREFIX/ASSET/CHANNEL (default plant)")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS (default 1)")
    p.add_argument("--client-id", default=None, help="MQTT client id (default: unique per run)")


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Synthetic plant of pumps that degrade towards "
                     "failure: history files for training, live MQTT, replay of a history file.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hist = sub.add_parser("history", help="write history and events files",
                          description="Simulate the plant and write DIR/history.csv (or "
                          ".parquet: ts,asset,channel,value, sorted by ts) and DIR/events.csv "
                          "(ts,asset,event: failure, maintenance).")
    _add_plant_args(hist)
    hist.add_argument("--days", type=_positive, required=True, metavar="D",
                      help="simulated days to write")
    hist.add_argument("--format", choices=FORMATS, default="csv",
                      help="history file format (default csv)")
    hist.add_argument("--partition", choices=PARTITIONS, default="none",
                      help="write DIR/history/ as a folder of Parquet files, one per asset "
                      "(asset=NAME/) or per UTC day (date=YYYY-MM-DD/); needs --format parquet "
                      "(default none: one file)")
    hist.add_argument("--start", type=_time, default=DEFAULT_START_TS, metavar="TIME",
                      help="first timestamp, epoch seconds or RFC 3339 (default "
                      f"{format_rfc3339(DEFAULT_START_TS)})")
    hist.add_argument("--out", required=True, metavar="DIR", help="output directory")
    hist.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    hist.set_defaults(func=_cmd_history)

    live = sub.add_parser("live", help="publish the plant live to MQTT",
                          description="Publish readings as {\"ts\", \"value\"} JSON to "
                          "PREFIX/ASSET/CHANNEL. Simulated time runs SPEED times wall time "
                          "from a start in the past and never runs ahead of the wall clock. "
                          "Events (failure, maintenance) are printed to stdout.")
    _add_mqtt_args(live)
    _add_plant_args(live)
    live.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                      help="simulated seconds per wall second (default 1)")
    live.add_argument("--duration", type=_positive, default=None, metavar="S",
                      help="stop after S wall seconds (default: run until SIGINT/SIGTERM)")
    live.add_argument("--start", type=_time, default=None, metavar="TIME",
                      help="first simulated time, epoch seconds or RFC 3339 (default: "
                      "now - duration*speed, or one day ago without --duration)")
    live.add_argument("--fail", action="append", default=[], metavar="ASSET",
                      help="force ASSET (e.g. pump-002) to fail; repeatable")
    live.add_argument("--fail-within", type=_positive, default=DEFAULT_FAIL_WITHIN_S,
                      metavar="S", help="simulated seconds from the start to a forced "
                      f"failure (default {DEFAULT_FAIL_WITHIN_S:g})")
    live.set_defaults(func=_cmd_live)

    spb = sub.add_parser("sparkplug", help="publish the plant as a Sparkplug B edge node",
                         description="One Sparkplug B 3.0 edge node (spBv1.0/GROUP/.../NODE) with "
                         "each pump as a device: NBIRTH (bdSeq, Node Control/Rebirth), a DBIRTH "
                         "per pump, DDATA by alias with seq 0..255, DDEATH when a pump fails, "
                         "NDEATH as the MQTT will. Honours rebirth requests (NCMD). Simulated "
                         "time runs as in `live`.")
    spb.add_argument("--broker", type=_broker, required=True, metavar="URL",
                     help="mqtt://host:port or mqtts://host:port (TLS with system CAs)")
    spb.add_argument("--group", default="plant", help="Sparkplug group id (default plant)")
    spb.add_argument("--node", default="sim-edge", help="Sparkplug edge node id (default sim-edge)")
    spb.add_argument("--client-id", default=None, help="MQTT client id (default: unique per run)")
    _add_plant_args(spb)
    spb.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                     help="simulated seconds per wall second (default 1)")
    spb.add_argument("--duration", type=_positive, default=None, metavar="S",
                     help="stop after S wall seconds (default: run until SIGINT/SIGTERM)")
    spb.add_argument("--start", type=_time, default=None, metavar="TIME",
                     help="first simulated time, epoch seconds or RFC 3339 (default: "
                     "now - duration*speed, or one day ago without --duration)")
    spb.add_argument("--fail", action="append", default=[], metavar="ASSET",
                     help="force ASSET (e.g. pump-002) to fail; repeatable")
    spb.add_argument("--fail-within", type=_positive, default=DEFAULT_FAIL_WITHIN_S,
                     metavar="S", help="simulated seconds from the start to a forced "
                     f"failure (default {DEFAULT_FAIL_WITHIN_S:g})")
    spb.set_defaults(func=_cmd_sparkplug)

    rep = sub.add_parser("replay", help="play a history file to MQTT",
                         description="Publish a long-format file (CSV or Parquet, "
                         "ts,asset,channel,value sorted by ts) in event-time order, keeping "
                         "each reading's ts; exits once every message is acknowledged.")
    rep.add_argument("path", metavar="PATH", help="history file (.csv or .parquet)")
    _add_mqtt_args(rep)
    rep.add_argument("--speed", type=_replay_speed, default=1.0, metavar="X",
                     help="divide gaps between event times by X; 0 or inf: as fast as "
                     "possible (default 1)")
    rep.add_argument("--codec", choices=CODECS, default="json",
                     help="json: PREFIX/ASSET/CHANNEL {ts,value}; json-multi: PREFIX/ASSET "
                     "{ts,values} (default json)")
    rep.add_argument("--ack-timeout", type=_positive, default=60.0, metavar="S",
                     help="wait at most S seconds for the last acknowledgements (default 60)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    rep.set_defaults(func=_cmd_replay)
    return parser
