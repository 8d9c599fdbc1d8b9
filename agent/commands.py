"""Operator commands: acknowledge and shelve alarms per asset; promote the shadow model, refit.

Topics: `{prefix}/cmd/{asset}/ack` (`{"alert_id"?}`), `{prefix}/cmd/{asset}/shelve`
(`{"for_s": n}` or `{"until": ts}`), `{prefix}/cmd/{asset}/unshelve`, and
`{prefix}/agents/{agent_id}/cmd/promote` and `.../cmd/refit` (train a candidate now). Who sent a
command is what the broker tells: the MQTT 5 user properties of the message (`operator`, `user`,
`client_id`...), if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.ingest import loads, parse_ts
from agent.names import valid_name

ASSET_COMMANDS = ("ack", "shelve", "unshelve")
AGENT_COMMANDS = ("promote", "refit")
_SENDER_KEYS = ("operator", "user", "username", "client_id", "clientid", "sender")


@dataclass(frozen=True)
class Command:
    """One operator command, parsed; `asset` is empty for agent-wide commands."""

    name: str
    asset: str
    args: dict[str, Any] = field(default_factory=dict)
    sender: str = "unknown"


def sender_of(user_properties: list[tuple[str, str]] | None) -> str:
    """Who sent a message, from its MQTT 5 user properties ("unknown" when it does not say)."""
    props = {k.lower(): v for k, v in user_properties or []}
    for key in _SENDER_KEYS:
        if props.get(key):
            return str(props[key])[:128]
    return "unknown"


def parse_command(prefix: str, agent_id: str, topic: str, payload: bytes,
                  sender: str = "unknown") -> Command | str:
    """The command in a message, or a one-line reason why it is not one."""
    for name in AGENT_COMMANDS:
        if topic == f"{prefix}/agents/{agent_id}/cmd/{name}":
            return Command(name, "", {}, sender)
    rest = topic.removeprefix(f"{prefix}/cmd/")
    asset, _, name = rest.rpartition("/")
    if rest == topic or name not in ASSET_COMMANDS or not valid_name(asset):
        return "unknown command topic"
    doc: Any = {}
    if payload.strip():
        try:
            doc = loads(payload)
        except ValueError:
            return "not JSON"
        if not isinstance(doc, dict):
            return "not a JSON object"
    args: dict[str, Any] = {}
    if name == "ack":
        aid = doc.get("alert_id")
        if aid is not None and not isinstance(aid, str):
            return "alert_id must be a string"
        args["alert_id"] = aid
    elif name == "shelve":
        if "for_s" in doc:
            v = doc["for_s"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9:
                return "for_s must be a positive number of seconds"
            args["for_s"] = float(v)
        elif "until" in doc:
            until = parse_ts(doc["until"], "auto")
            if until is None:
                return "until must be a timestamp"
            args["until"] = until
        else:
            return "shelve needs for_s or until"
        reason = doc.get("reason", "")
        args["reason"] = str(reason)[:200] if isinstance(reason, str) else ""
    return Command(name, asset, args, sender)
