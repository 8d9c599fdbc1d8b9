"""Training checkpoints: model, optimiser, schedule, step, best score, config and the model contract.

A checkpoint carries the model's constructor arguments and the data contract (channels,
period, window, normalisation...), so the model can be rebuilt from the file alone
(`rebuild`), and a stopped run resumes exactly (`load`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agent.errors import ModelError
from training.model import Forecaster, ModelConfig

FORMAT = "vigil-checkpoint/1"


@dataclass
class LoopState:
    """Where the loop is: epochs done, the best validation score so far and its weights."""

    epoch: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)


def save(path: Path, model: Forecaster, opt: torch.optim.Optimizer, sched: Any, ema: nn.Module | None,
         state: LoopState, train_config: dict[str, Any], contract: dict[str, Any]) -> None:
    """Write the whole training state atomically (a crash mid-write leaves the last good one)."""
    doc = {
        "format": FORMAT,
        "model_config": asdict(model_config(model)),
        "train_config": train_config,
        "contract": contract,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "step": int(sched.last_epoch),
        "epoch": state.epoch,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "stale": state.stale,
        "best_state": state.best_state,
        "curve": state.curve,
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def read(path: Path) -> dict[str, Any]:
    """The checkpoint's contents; ModelError if it is not one."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ModelError(f"checkpoint {path}: cannot be read ({type(exc).__name__})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"checkpoint {path}: not a {FORMAT} file")
    return doc


def load(path: Path, model: Forecaster, opt: torch.optim.Optimizer, sched: Any, ema: nn.Module | None,
         train_config: dict[str, Any]) -> LoopState:
    """Restore a run into freshly built objects; refuse a checkpoint of another model or config."""
    doc = read(path)
    # Rebuilt through ModelConfig, a checkpoint from before a field existed has that field's default.
    try:
        stored = ModelConfig(**doc["model_config"])
    except TypeError as exc:  # a field this version does not know: written by a newer one
        raise ModelError(f"checkpoint {path}: model config {doc['model_config']} is not one this version "
                         f"can build ({exc})") from exc
    if stored != model_config(model):
        raise ModelError(f"checkpoint {path}: made for model {doc['model_config']}, not this one")
    if doc["train_config"] != train_config:
        changed = sorted(k for k in train_config if doc["train_config"].get(k) != train_config[k]
                         and k not in ("progress", "progress_label", "stop_after"))
        if changed:
            raise ModelError(f"checkpoint {path}: training config differs in {changed}")
    model.load_state_dict(doc["model"])
    opt.load_state_dict(doc["optimizer"])
    sched.load_state_dict(doc["scheduler"])
    if ema is not None and doc["ema"] is not None:
        ema.load_state_dict(doc["ema"])
    return LoopState(doc["epoch"], doc["best_score"], doc["best_epoch"], doc["stale"], doc["best_state"],
                     list(doc["curve"]))


def model_config(model: Forecaster) -> ModelConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ModelError("model has no ModelConfig attached")
    return cfg


def rebuild(path: Path) -> tuple[Forecaster, dict[str, Any]]:
    """The best model of a checkpoint, rebuilt from the file alone, and its contract."""
    doc = read(path)
    model = Forecaster(ModelConfig(**doc["model_config"]))
    model.load_state_dict(doc["best_state"] or doc["model"])
    model.eval()
    return model, doc["contract"]
