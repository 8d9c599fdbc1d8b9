"""One readable training loop: Gaussian NLL for forecasts, BCE for failure, early stopping."""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from agent.spec import Normalisation
from training.labels import WindowSet
from training.model import Forecaster


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    windows_per_epoch: int = 40_000
    val_windows: int = 20_000
    patience: int = 4
    fail_weight: float = 1.0
    seed: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    model: Forecaster
    best_val_loss: float
    epochs_run: int
    curve: list[dict[str, float]] = field(default_factory=list)


def gaussian_nll(mean: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    """Per-window Gaussian negative log-likelihood (constant dropped), averaged over H and C."""
    return (0.5 * (logvar + (y - mean) ** 2 * torch.exp(-logvar))).mean(dim=(1, 2))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _batch_loss(model: Forecaster, ws: WindowSet, idx: np.ndarray, norm: Normalisation,
                pos_weight: Tensor, fail_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.from_numpy(ws.x(idx, norm))
    y = torch.from_numpy(ws.y(idx, norm))
    mask = torch.from_numpy(ws.has_target[idx].astype(np.float32))
    mean, logvar, logit = model.heads(x)
    nll = (gaussian_nll(mean, logvar, y) * mask).sum() / mask.sum().clamp(min=1.0)
    bce = torch.zeros(())
    if model.has_fail:
        target = torch.from_numpy(ws.fail[idx])
        bce = nn.functional.binary_cross_entropy_with_logits(logit, target, pos_weight=pos_weight)
    return nll + fail_weight * bce, nll, bce


def train(model: Forecaster, train_ws: WindowSet, val_ws: WindowSet, norm: Normalisation,
          cfg: TrainConfig) -> TrainResult:
    """Train with Adam and a cosine schedule; keep the weights with the best validation loss."""
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pos = float(train_ws.fail.sum())
    neg = float(len(train_ws) - pos)
    # Failures are rare; weigh positives up, but not so far that noise dominates.
    pos_weight = torch.tensor(min(neg / pos, 50.0) if pos > 0 else 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    val_idx = np.sort(rng.choice(len(val_ws), min(len(val_ws), cfg.val_windows), replace=False))
    best, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    result = TrainResult(model, math.inf, 0)
    for epoch in range(cfg.epochs):
        model.train()
        n = min(len(train_ws), cfg.windows_per_epoch)
        order = rng.choice(len(train_ws), n, replace=False)
        batches = range(0, n, cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   file=sys.stderr, leave=False, unit="batch")
        total = 0.0
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            loss, _, _ = _batch_loss(model, train_ws, idx, norm, pos_weight, cfg.fail_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sched.step()
        val = evaluate_loss(model, val_ws, val_idx, norm, pos_weight, cfg)
        row = {"epoch": epoch + 1, "train_loss": total / n, **val}
        result.curve.append(row)
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: train {row['train_loss']:.4f} val {val['val_loss']:.4f} "
                       f"(nll {val['val_nll']:.4f} bce {val['val_bce']:.4f})", file=sys.stderr)
        result.epochs_run = epoch + 1
        if val["val_loss"] < best - 1e-4:
            best, best_state, stale = val["val_loss"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    result.best_val_loss = best
    return result


def evaluate_loss(model: Forecaster, ws: WindowSet, idx: np.ndarray, norm: Normalisation,
                  pos_weight: Tensor, cfg: TrainConfig) -> dict[str, float]:
    """Validation loss in eval mode, without gradients."""
    model.eval()
    sums = np.zeros(3)
    with torch.no_grad():
        for start in range(0, len(idx), 1024):
            b = idx[start : start + 1024]
            parts = _batch_loss(model, ws, b, norm, pos_weight, cfg.fail_weight)
            sums += np.array([float(p) for p in parts]) * len(b)
    sums /= max(len(idx), 1)
    return {"val_loss": float(sums[0]), "val_nll": float(sums[1]), "val_bce": float(sums[2])}
