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
import shutil
import time
from pathlib import Path
from typing import Any

from agent.alerts import rfc3339_ms
from agent.config import AgentConfig


def record_decision(cfg: AgentConfig, kind: str, **fields: Any) -> dict[str, Any]:
    """Append one decision to `models/decisions.jsonl` (one write: whole lines when processes share it)."""
    doc = {"ts": rfc3339_ms(time.time()), "kind": kind, "agent_id": cfg.resolved_agent_id, **fields}
    cfg.models_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(doc, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(cfg.models_dir / "decisions.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return doc


def _install(src: Path, dst: Path) -> None:
    """Copy `src` over `dst` atomically (a watcher never reads half a file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def previous_path(cfg: AgentConfig) -> Path:
    live = Path(cfg.model.path)
    return live.with_name(live.name + ".previous")


def install_guard(cfg: AgentConfig) -> bool:
    """After a promotion, the model it replaced becomes the shadow (False: there was none)."""
    prev = previous_path(cfg)
    if not prev.exists():
        return False
    _install(prev, cfg.shadow_path)
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
