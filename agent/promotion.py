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


def install_file(src: Path, dest: Path) -> None:
    """Copy `src` over `dest` atomically and durably: a temporary file beside it, synced, renamed,
    the folder synced (a reader never sees half a file; a crash leaves the old one or the new)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        _sync(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _sync(dest.parent)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
