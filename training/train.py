"""One readable training loop: Gaussian NLL for forecasts, BCE for failure, Huber for RUL.

Adam with a warm-up and cosine learning-rate schedule, early stopping on validation
(RUL RMSE when the model has an RUL head, else the validation loss), a checkpoint after
every epoch, and per-epoch seeds, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from training import checkpoint as ckpt
from training.labels import Inputs
from training.model import Forecaster


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    windows_per_epoch: int = 40_000
    val_windows: int = 20_000
    patience: int = 4
    forecast_weight: float = 1.0
    fail_weight: float = 1.0
    rul_weight: float = 1.0
    # Huber's switch from squared to absolute error, in units of the RUL cap (0.1 x 125 = 12.5 cycles).
    huber_delta: float = 0.1
    # Gaussian noise added to normalised training inputs (a cheap regulariser; 0 = none).
    input_noise: float = 0.0
    # Exponential moving average of the weights, evaluated and kept instead of the raw ones (0 = off).
    ema: float = 0.0
    seed: int = 0
    progress: bool = True
    # Stop after this many epochs in this run, checkpoint kept, to resume later (0: run to the end).
    stop_after: int = 0


@dataclass
class TrainResult:
    model: Forecaster
    best_score: float
    epochs_run: int
    best_epoch: int = 0
    finished: bool = True
    curve: list[dict[str, float]] = field(default_factory=list)


def gaussian_nll(mean: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    """Per-window Gaussian negative log-likelihood (constant dropped), averaged over H and C."""
    return (0.5 * (logvar + (y - mean) ** 2 * torch.exp(-logvar))).mean(dim=(1, 2))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass(frozen=True)
class Targets:
    """Per-window training targets besides the forecast (NaN RUL: unknown, left out)."""

    fail: np.ndarray
    rul: np.ndarray       # RUL / cap, NaN where unknown
    pos_weight: float


def make_targets(data: Inputs, rul_cap: float) -> Targets:
    ws = data.ws
    pos = float(ws.fail.sum())
    neg = float(len(ws) - pos)
    # Failures are rare; weigh positives up, but not so far that noise dominates.
    pos_weight = min(neg / pos, 50.0) if pos > 0 else 1.0
    return Targets(ws.fail, ws.rul_target(rul_cap) / np.float32(rul_cap), pos_weight)


def batch_loss(model: Forecaster, data: Inputs, tg: Targets, idx: np.ndarray, cfg: TrainConfig,
               noise: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted loss of one batch and its parts (forecast NLL, failure BCE, RUL Huber, RUL MSE)."""
    x = torch.from_numpy(data.x(idx))
    if noise > 0:
        x = x + noise * torch.randn_like(x)
    mean, logvar, logit, rul = model.heads(x)
    parts: dict[str, Tensor] = {}
    loss = torch.zeros(())
    if model.has_forecast:
        y = torch.from_numpy(data.y(idx))
        mask = torch.from_numpy(data.ws.has_target[idx].astype(np.float32))
        parts["nll"] = (gaussian_nll(mean, logvar, y) * mask).sum() / mask.sum().clamp(min=1.0)
        loss = loss + cfg.forecast_weight * parts["nll"]
    if model.has_fail:
        target = torch.from_numpy(tg.fail[idx])
        parts["bce"] = nn.functional.binary_cross_entropy_with_logits(
            logit, target, pos_weight=torch.tensor(tg.pos_weight))
        loss = loss + cfg.fail_weight * parts["bce"]
    if model.has_rul:
        r = torch.from_numpy(tg.rul[idx])
        known = torch.isfinite(r)
        err = rul[known] - r[known]
        n = known.sum().clamp(min=1)
        # Huber, divided by delta so large errors cost like absolute error in units of the cap.
        huber = nn.functional.huber_loss(err, torch.zeros_like(err), reduction="sum", delta=cfg.huber_delta)
        parts["rul"] = huber / cfg.huber_delta / n
        parts["rul_mse"] = (err**2).sum() / n
        loss = loss + cfg.rul_weight * parts["rul"]
    return loss, parts


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = max(int(cfg.warmup_frac * total), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

    return factor


def train(model: Forecaster, train_data: Inputs, val_data: Inputs, cfg: TrainConfig, rul_cap: float,
          *, checkpoint: Path | None = None, resume: bool = False,
          contract: dict[str, Any] | None = None) -> TrainResult:
    """Train with Adam and a warm-up + cosine schedule; keep the weights with the best validation score.

    With `checkpoint`, the whole state is saved after every epoch; with `resume`, training
    continues from it (same data, same config) as if it had never stopped.
    """
    seed_everything(cfg.seed)
    tg_train, tg_val = make_targets(train_data, rul_cap), make_targets(val_data, rul_cap)
    n = min(len(train_data.ws), cfg.windows_per_epoch)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps_per_epoch))
    ema = copy.deepcopy(model) if cfg.ema > 0 else None
    val_idx = np.sort(np.random.default_rng(cfg.seed).choice(
        len(val_data.ws), min(len(val_data.ws), cfg.val_windows), replace=False))
    kept = ema if ema is not None else model
    state = ckpt.LoopState(best_state=copy.deepcopy(kept.state_dict()))
    if resume and checkpoint is not None and checkpoint.exists():
        state = ckpt.load(checkpoint, model, opt, sched, ema, asdict(cfg))
    result = TrainResult(model, state.best_score, state.epoch, state.best_epoch, True, state.curve)
    for ran, epoch in enumerate(range(state.epoch, cfg.epochs)):
        if state.stale >= cfg.patience:
            break
        if cfg.stop_after and ran >= cfg.stop_after:
            result.finished = False
            break
        # Seeds per epoch: the order and the noise of epoch k do not depend on how we got there.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = np.random.default_rng([cfg.seed, epoch]).choice(len(train_data.ws), n, replace=False)
        model.train()
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, file=sys.stderr, leave=False, unit="batch")
        total = 0.0
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            loss, _ = batch_loss(model, train_data, tg_train, idx, cfg, cfg.input_noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                _ema_update(ema, model, cfg.ema)
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        val = evaluate_loss(kept, val_data, tg_val, val_idx, cfg, rul_cap)
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / n,
                                 "lr": float(sched.get_last_lr()[0]), **val}
        state.curve.append(row)
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: train {row['train_loss']:.4f} "
                       + " ".join(f"{k} {v:.4f}" for k, v in val.items()), file=sys.stderr)
        score = val.get("val_rul_rmse", val["val_loss"]) if model.has_rul else val["val_loss"]
        if score < state.best_score - 1e-4:
            state.best_score, state.best_epoch, state.stale = score, epoch + 1, 0
            state.best_state = copy.deepcopy(kept.state_dict())
        else:
            state.stale += 1
        state.epoch = epoch + 1
        if checkpoint is not None:
            ckpt.save(checkpoint, model, opt, sched, ema, state, asdict(cfg), contract or {})
    model.load_state_dict(state.best_state)
    model.eval()
    result.best_score, result.epochs_run, result.best_epoch = state.best_score, state.epoch, state.best_epoch
    result.curve = state.curve
    return result


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p, alpha=1.0 - decay)


def evaluate_loss(model: Forecaster, data: Inputs, tg: Targets, idx: np.ndarray, cfg: TrainConfig,
                  rul_cap: float) -> dict[str, float]:
    """Validation loss (and RUL RMSE in cells) in eval mode, without gradients."""
    model.eval()
    sums: dict[str, float] = {}
    known = 0
    with torch.no_grad():
        for start in range(0, len(idx), 1024):
            b = idx[start : start + 1024]
            loss, parts = batch_loss(model, data, tg, b, cfg)
            sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * len(b)
            for k, v in parts.items():
                if k in ("rul", "rul_mse"):  # averaged over windows with a known RUL
                    n_known = int(np.isfinite(tg.rul[b]).sum())
                    sums[k] = sums.get(k, 0.0) + float(v) * n_known
                else:
                    sums[k] = sums.get(k, 0.0) + float(v) * len(b)
            known += int(np.isfinite(tg.rul[b]).sum())
    out = {("val_" + k if not k.startswith("val_") else k): v / max(len(idx), 1) for k, v in sums.items()
           if k not in ("rul", "rul_mse")}
    if "rul_mse" in sums:
        out["val_rul"] = sums["rul"] / max(known, 1)
        out["val_rul_rmse"] = math.sqrt(sums["rul_mse"] / max(known, 1)) * rul_cap
    return out
