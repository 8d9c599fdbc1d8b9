"""`vigil-agent`: run the daemon, check a config file, promote the shadow model, or watch the fleet.

The daemon logs through structlog; the one-shot commands print their result on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.errors import VigilError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.spec import ModelSpec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil-agent", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the agent daemon")
    r.add_argument("--config", type=Path, required=True, help="agent TOML config")
    c = sub.add_parser("check-config", help="validate a config; print what it would do")
    c.add_argument("file", type=Path)
    pr = sub.add_parser("promote", help="make the [model.shadow] model the live one (the running "
                                        "agent hot-swaps it)")
    pr.add_argument("--config", type=Path, required=True, help="agent TOML config")
    from agent.top.app import add_parser as add_top
    add_top(sub)
    return p


def example_topic(template: str) -> str:
    """The template with each named part replaced by an example value."""
    examples = {"asset": "pump-001", "channel": "bearing_temp", "line": "line-1", "site": "site-a"}
    parts = []
    for level in template.split("/"):
        if level.startswith("{") and level.endswith("}"):
            name = level[1:-1]
            parts.append(examples.get(name, f"{name}-1"))
        else:
            parts.append(level)
    return "/".join(parts)


def thresholds_in_force(cfg: AgentConfig, spec: ModelSpec) -> dict[str, Any]:
    """The thresholds the agent decides with, and where each comes from: the config's own
    `[model] warning`/`critical`, or the model's calibration (moved by `[model] sensitivity`)."""
    from agent.risk import in_force, sensitive

    m = cfg.model
    t = in_force(spec.thresholds, m.sensitivity, m.warning, m.critical)
    moved = sensitive(spec.thresholds, m.sensitivity)
    calibrated = ("the model's calibration" if moved == spec.thresholds
                  else f"the model's calibration at [model] sensitivity {m.sensitivity:g}")

    def source(own: float | None, value: float, level: str) -> str:
        if own is not None:
            return f"[model] {level} in the config" if own == value else "raised to the warning in force"
        return calibrated if value == getattr(moved, level) else "raised to the warning in force"

    out: dict[str, Any] = {k: v for k, v in asdict(t).items() if k != "tail"}
    out["source"] = {"warning": source(m.warning, t.warning, "warning"),
                     "critical": source(m.critical, t.critical, "critical")}
    out["model_calibrated"] = {"warning": spec.thresholds.warning, "critical": spec.thresholds.critical}
    return out


def check_config(path: Path) -> dict[str, Any]:
    """Validate config and model; return the summary that check-config prints."""
    from agent.config import load_config
    from agent.runtime import load_runtime
    from agent.shadow import load_shadow
    from agent.spec import spec_summary

    cfg = load_config(path)
    rt = load_runtime(cfg.model)
    shadow = load_shadow(cfg, rt)
    resolved = json.loads(cfg.model_dump_json())
    for key in ("password",):
        if resolved["broker"].get(key):
            resolved["broker"][key] = "***"
    return {
        "config": resolved,
        "agent_id": cfg.resolved_agent_id,
        "subscriptions": [
            {"filter": s.filter, "template": s.template, "codec": s.codec, "hold_s": s.hold_s,
             "example_topic": ("spBv1.0/plant/DDATA/edge-1/pump-001" if s.codec == "sparkplug"
                               else example_topic(s.template))} for s in cfg.subscriptions],
        "model": {"path": str(cfg.model.path), **spec_summary(rt.spec)},
        "thresholds_in_force": thresholds_in_force(cfg, rt.spec),
        **({"shadow_model": {"path": str(cfg.shadow_path), **spec_summary(shadow.spec)}}
           if shadow is not None else {}),
        **({"records": {"dir": str(cfg.record_dir), "max_bytes": cfg.record.max_bytes}}
           if cfg.record.enabled else {}),
        "publishes": {
            "alerts": f"{cfg.outputs.prefix}/alerts/{{asset}}",
            "risk": f"{cfg.outputs.prefix}/risk/{{asset}}",
            "status": f"{cfg.outputs.prefix}/agents/{cfg.resolved_agent_id}/status",
            "health": f"{cfg.outputs.prefix}/agents/{cfg.resolved_agent_id}/health",
            "flood": f"{cfg.outputs.prefix}/alarms/flood",
            "shelves": f"{cfg.outputs.prefix}/alarms/shelved/{{asset}}",
            "alarm_summary": f"{cfg.outputs.prefix}/alarms/active/{{asset}} (retained)",
            "replies": "the MQTT 5 response topic of each command and event"},
        "listens": {
            "events": f"{cfg.outputs.prefix}/events/{{asset}}",
            "commands": f"{cfg.outputs.prefix}/cmd/{{asset}}/ack|shelve|unshelve",
            "promote": f"{cfg.outputs.prefix}/agents/{cfg.resolved_agent_id}/cmd/promote"},
    }


def _promote(path: Path) -> int:
    from agent.config import load_config
    from agent.shadow import promote

    cfg = load_config(path)
    rt = promote(cfg)
    print(f"promoted {cfg.shadow_path} (version {rt.spec.version}) "
          f"to {cfg.model.path}; the previous file is {cfg.model.path}.previous")
    return 0


def _run(path: Path) -> int:
    from agent import logs
    from agent.app import Agent
    from agent.config import load_config

    cfg = load_config(path)
    logs.configure(cfg.log.level, cfg.log.format)
    if not cfg.model.path.exists():  # learning mode: record, then fit the first model
        from agent.learning import Learner

        learner = Learner(cfg)
        signal.signal(signal.SIGTERM, lambda s, f: learner.stop())
        signal.signal(signal.SIGINT, lambda s, f: learner.stop())
        if not learner.run():
            return 0
        # A gateway that learnt its machines keeps recording them: the refits read it.
        cfg = cfg.model_copy(update={"record": cfg.record.model_copy(update={"enabled": True})})
    agent = Agent(cfg)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        agent.reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return agent.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            print(json.dumps(check_config(args.file), indent=2))
            return 0
        if args.command == "promote":
            return _promote(args.config)
        if args.command == "top":
            from agent.top.app import run as run_top
            try:
                return run_top(args)
            except KeyboardInterrupt:
                return 130
        return _run(args.config)
    except VigilError as exc:
        print(f"vigil-agent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vigil-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
