"""`vigil-agent top`: the operator's live view over MQTT, in a terminal.

Reads what the agents publish (risk, alerts, standing alarms, shelves, status and health)
and sends the operator's acknowledgements and shelves as MQTT 5 commands, showing each
command's reply. Needs an interactive terminal; a broker that cannot be reached, or refuses
us, is a one-line error before the screen is taken over.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from pathlib import Path

from pydantic import ValidationError

from agent.config import BrokerConfig, TLSConfig
from agent.errors import ConfigError, VigilError
from agent.names import BrokerURL, valid_name

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(text: str) -> float:
    """Seconds from `3600`, `90s`, `30m`, `1h` or `2d`."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 90s, 30m, 1h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _label(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `top` subcommand's arguments."""
    t = sub.add_parser("top", help="the operator's live view over MQTT (assets by risk, alarms, keys to "
                                   "acknowledge and shelve)",
                       description="The operator's live view over MQTT. Keys: up/down or j/k select an "
                                   "asset, a acknowledges its latest alert, s shelves it, u unshelves "
                                   "it, q quits.")
    t.add_argument("--broker", default=os.environ.get("VIGIL_BROKER_URL", "mqtt://127.0.0.1:1883"),
                   help="mqtt://host:port or mqtts://host:port (default: $VIGIL_BROKER_URL or "
                        "mqtt://127.0.0.1:1883)")
    t.add_argument("--prefix", default="vigil", help="the agents' [outputs] prefix (default: vigil)")
    t.add_argument("--username", default=os.environ.get("VIGIL_BROKER_USERNAME"),
                   help="broker user (default: $VIGIL_BROKER_USERNAME)")
    t.add_argument("--password-file", type=Path,
                   help="file holding the broker password (default: $VIGIL_BROKER_PASSWORD)")
    t.add_argument("--ca-file", type=Path, help="CA certificates for mqtts:// (default: the system's)")
    t.add_argument("--cert-file", type=Path, help="client certificate for mqtts://")
    t.add_argument("--key-file", type=Path, help="client certificate key for mqtts://")
    t.add_argument("--operator", default=None,
                   help="who the commands name (MQTT 5 user property `operator`; default: login name)")
    t.add_argument("--shelve-for", type=duration_s, default=3600.0, metavar="DURATION",
                   help="how long `s` shelves an asset: seconds or 90s, 30m, 1h, 2d (default: 1h)")


def broker_config(args: argparse.Namespace) -> BrokerConfig:
    """The broker settings from the command line and environment, checked."""
    BrokerURL.parse(args.broker)  # ConfigError with a one-line reason
    if not all(valid_name(p) for p in args.prefix.split("/")):
        raise ConfigError(f"--prefix {args.prefix!r}: must be topic levels without + # or NUL")
    try:
        return BrokerConfig(
            url=args.broker, client_id="vigil-top", username=args.username or None,
            password=os.environ.get("VIGIL_BROKER_PASSWORD") if args.password_file is None else None,
            password_file=args.password_file,
            tls=TLSConfig(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc


def operator_name(given: str | None) -> str:
    if given:
        return given[:128]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    """Run the view until `q`; returns the exit code."""
    broker = broker_config(args)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VigilError("top needs an interactive terminal (stdin and stdout a TTY); to just watch, "
                         f"subscribe to {args.prefix}/# with mosquitto_sub")
    operator = operator_name(args.operator)
    # Imported here: the other commands need neither rich nor the view.
    from agent.top.link import TopLink
    from agent.top.screen import loop

    link = TopLink(broker, args.prefix, operator)
    link.connect()
    try:
        return loop(link, args.prefix, operator, args.shelve_for, _label(args.shelve_for))
    finally:
        link.close()
