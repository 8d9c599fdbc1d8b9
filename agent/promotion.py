"""The model files of the learning loop, and the record of every decision about them.

In the state directory's `models/`: `shadow.pt` is the model on trial (a refit's accepted
candidate, or after a promotion the model it replaced: the guard); a dropped shadow moves to
`rejected/`; the live file's previous version stays beside it as `<name>.previous`
(agent.shadow.promote). Every decision is one JSON line in `decisions.jsonl`, which the refits
(`vigil-train refit`) append to as well.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from agent.alerts import rfc3339_ms
from agent.config import AgentConfig
from agent.files import append_line, install_file


def record_decision(cfg: AgentConfig, kind: str, **fields: Any) -> dict[str, Any]:
    """Append one decision to `models/decisions.jsonl` (one write: whole lines when processes share it)."""
    doc = {"ts": rfc3339_ms(time.time()), "kind": kind, "agent_id": cfg.resolved_agent_id, **fields}
    append_line(cfg.models_dir / "decisions.jsonl", json.dumps(doc, separators=(",", ":"), default=str))
    return doc


def previous_path(cfg: AgentConfig) -> Path:
    live = Path(cfg.model.path)
    return live.with_name(live.name + ".previous")


def install_guard(cfg: AgentConfig) -> bool:
    """After a promotion, the model it replaced becomes the shadow (False: there was none)."""
    prev = previous_path(cfg)
    if not prev.exists():
        return False
    install_file(prev, cfg.shadow_path)
    return True


def drop_shadow(cfg: AgentConfig, version: str) -> Path | None:
    """Move the shadow file out of the way (kept in `models/rejected/`); its new path, or None."""
    path = cfg.shadow_path
    if not path.exists():
        return None
    dest = cfg.models_dir / "rejected" / f"{version or 'unknown'}-{int(time.time())}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    return dest
