"""One readable training loop: Gaussian NLL for forecasts, BCE for failure, Huber for RUL.

Adam with a warm-up and cosine learning-rate schedule, early stopping on validation
(RUL RMSE when the model has an RUL head, else the validation loss), a checkpoint after
every epoch, and per-epoch seeds, so a resumed run continues exactly where it stopped.
The same loop runs on one process or on several under torchrun (DDP, `training.distributed`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from tqdm import tqdm

from training import checkpoint as ckpt
from training import distributed as dist
from training.labels import Inputs
from training.model import Forecaster
from training.shards import Census, Plan, Rows, as_source, census, validation_rows
from training.source import WindowSource


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
    # The forecast likelihood's switch from squared to linear z-score (0: plain Gaussian).
    nll_delta: float = 3.0
    # Gaussian noise added to normalised training inputs (a cheap regulariser; 0 = none).
    input_noise: float = 0.0
    # Exponential moving average of the weights, evaluated and kept instead of the raw ones (0 = off).
    ema: float = 0.0
    seed: int = 0
    progress: bool = True
    # Set, each epoch's line starts with it and the batch bar is left out: lines from members
    # training side by side in several processes stay whole and say whose they are.
    progress_label: str = ""
    # Stop after this many epochs in this run, checkpoint kept, to resume later (0: run to the end).
    stop_after: int = 0
    # Train exactly this many epochs of the schedule (planned for `epochs`) and keep the last
    # weights, with no choice on validation: a refit on all assets (0: early stopping).
    run_epochs: int = 0
    # Each epoch deals the training assets to this many shards (training/shards.py): a multiple
    # of every number of processes that this run, and any resume of it, will use.
    shards: int = 8
    # Windows a shard loads at a time (whole assets; it holds up to twice as many): bounds memory.
    shard_windows: int = 200_000


@dataclass
class TrainResult:
    model: Forecaster
    best_score: float
    epochs_run: int
    best_epoch: int = 0
    finished: bool = True
    curve: list[dict[str, float]] = field(default_factory=list)


def gaussian_nll(mean: Tensor, logvar: Tensor, y: Tensor, delta: float = 0.0) -> Tensor:
    """Per-window Gaussian negative log-likelihood (constant dropped), averaged over H and C.

    With `delta` > 0 the squared z-score turns linear beyond |z| = delta (Huber): an outlier in
    the training data pulls the forecast and its variance with a bounded force, not a quadratic one.
    """
    z2 = (y - mean) ** 2 * torch.exp(-logvar)
    if delta > 0:
        z = torch.sqrt(z2 + 1e-12)
        z2 = torch.where(z <= delta, z2, 2.0 * delta * z - delta * delta)
    return (0.5 * (logvar + z2)).mean(dim=(1, 2))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = max(int(cfg.warmup_frac * total), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

    return factor


Heads = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def loss_sums(heads: Heads, model: Forecaster, rows: Rows, cfg: TrainConfig, pos_weight: float,
              device: torch.device) -> Tensor:
    """Sums over `rows` of the loss parts: forecast NLL (rows with targets), failure BCE, RUL Huber
    (divided by delta) and squared RUL error (rows with a known RUL). `heads` computes
    `model.heads` (directly, or through DDP's wrapper)."""
    if len(rows) == 0:
        # A process may draw nothing in a step while others do; under DDP it must still run
        # forward and backward, so it contributes zero through the same graph.
        out = heads(torch.zeros(1, 1, model.n_channels, device=device))
        return torch.stack([o.sum() for o in out]).sum().mul(0.0).expand(4)
    x = torch.from_numpy(rows.x).to(device)
    mean, logvar, logit, rul = heads(x)
    zero = x.new_zeros(())
    nll = bce = huber = sq = zero
    if model.has_forecast:
        y = torch.from_numpy(rows.y).to(device)
        mask = torch.from_numpy(rows.has_target.astype(np.float32)).to(device)
        nll = (gaussian_nll(mean, logvar, y, cfg.nll_delta) * mask).sum()
    if model.has_fail:
        target = torch.from_numpy(rows.fail).to(device)
        bce = nn.functional.binary_cross_entropy_with_logits(
            logit, target, pos_weight=torch.tensor(pos_weight, device=device), reduction="sum")
    if model.has_rul:
        r = torch.from_numpy(rows.rul).to(device)
        known = torch.isfinite(r)
        err = rul[known] - r[known]
        # Huber, divided by delta so large errors cost like absolute error in units of the cap.
        huber = nn.functional.huber_loss(err, torch.zeros_like(err), reduction="sum",
                                         delta=cfg.huber_delta) / cfg.huber_delta
        sq = (err**2).sum()
    return torch.stack([nll, bce, huber, sq])


def combine(sums: Tensor, counts: npt.NDArray[np.float64], model: Forecaster, cfg: TrainConfig
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted loss and its parts (means) from part sums and the batch's (global) counts."""
    rows, target, known = (max(float(c), 1.0) for c in counts)
    parts: dict[str, Tensor] = {}
    loss = sums.new_zeros(())
    if model.has_forecast:
        parts["nll"] = sums[0] / target
        loss = loss + cfg.forecast_weight * parts["nll"]
    if model.has_fail:
        parts["bce"] = sums[1] / rows
        loss = loss + cfg.fail_weight * parts["bce"]
    if model.has_rul:
        parts["rul"], parts["rul_mse"] = sums[2] / known, sums[3] / known
        loss = loss + cfg.rul_weight * parts["rul"]
    return loss, parts


def pos_weight_of(counts: Census) -> float:
    """Failures are rare; weigh positives up, but not so far that noise dominates."""
    pos = float(counts.fails.sum())
    neg = float(counts.total) - pos
    return min(neg / pos, 50.0) if pos > 0 else 1.0


class _Heads(nn.Module):
    """The model's raw heads as `forward`, so DDP (which hooks forward) can wrap them."""

    def __init__(self, model: Forecaster) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.model.heads(x)


BatchHook = Callable[[int, int, npt.NDArray[np.int64]], None]


def train(model: Forecaster, train_data: Inputs | WindowSource, val_data: Inputs | WindowSource,
          cfg: TrainConfig, rul_cap: float, *, checkpoint: Path | None = None, resume: bool = False,
          contract: dict[str, Any] | None = None, ctx: dist.Dist = dist.SINGLE,
          on_batch: BatchHook | None = None) -> TrainResult:
    """Train with Adam and a warm-up + cosine schedule; keep the weights with the best validation score.

    Windows come by asset from the sources (or from windows in memory), drawn through
    `training.shards`: on several processes (`ctx`), each draws its share of every global
    batch and DDP averages the gradients, which trains the same weights as one process.
    With `checkpoint`, the whole state is saved (by rank 0) after every epoch; with `resume`,
    training continues from it (same data, same config) as if it had never stopped.
    `on_batch(epoch, step, ids)` sees the (asset, end cell) of this process's windows of each step.
    """
    seed_everything(cfg.seed)
    plan = Plan(cfg.shards, cfg.shard_windows, cfg.batch_size, cfg.windows_per_epoch, cfg.seed,
                cfg.input_noise)
    plan.check(ctx.world)
    train_src, val_src = as_source(train_data), as_source(val_data)
    train_counts = census(train_src, ctx, cfg.shard_windows)
    val_counts = census(val_src, ctx, cfg.shard_windows)
    if train_counts.total == 0:
        raise ValueError("no training windows")
    pw_train, pw_val = pos_weight_of(train_counts), pos_weight_of(val_counts)
    steps_per_epoch = plan.sizes(train_counts.total)[1]
    model.to(ctx.device)
    resuming = resume and checkpoint is not None and _visible(checkpoint, ctx)
    if not resuming:  # a resumed run has its scale in the checkpoint
        fit_trend_scale(model, train_src, train_counts, cfg, ctx, rul_cap)
    heads = dist.wrap(ctx, _Heads(model))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps_per_epoch))
    ema = copy.deepcopy(model) if cfg.ema > 0 else None
    kept = ema if ema is not None else model
    state = ckpt.LoopState(best_state=copy.deepcopy(kept.state_dict()))
    if resuming:
        assert checkpoint is not None
        state = ckpt.load(checkpoint, model, opt, sched, ema, asdict(cfg))
    result = TrainResult(model, state.best_score, state.epoch, state.best_epoch, True, state.curve)
    show = cfg.progress and ctx.is_writer
    if not 0 <= cfg.run_epochs <= cfg.epochs:
        raise ValueError(f"run_epochs must be within 0..epochs ({cfg.epochs}), got {cfg.run_epochs}")
    last = cfg.run_epochs or cfg.epochs
    for ran, epoch in enumerate(range(state.epoch, last)):
        if state.stale >= cfg.patience and not cfg.run_epochs:
            break
        if cfg.stop_after and ran >= cfg.stop_after:
            result.finished = False
            break
        # Seeds per epoch: the draws and the noise of epoch k do not depend on how we got there.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        ep = plan.epoch(train_src, train_counts, epoch, ctx, rul_cap)
        model.train()
        bar = tqdm(range(ep.steps), desc=f"epoch {epoch + 1}/{last}", file=sys.stderr, leave=False,
                   # disable=None: a bar only on a terminal, never in a log file
                   unit="batch", disable=True if not show or cfg.progress_label else None)
        total, seen, started = 0.0, 0.0, time.monotonic()
        for step in bar:
            rows = ep.batch(step)
            if on_batch is not None:
                on_batch(epoch, step, rows.ids)
            counts = dist.all_reduce_sum(ctx, rows.counts())
            if counts[0] == 0:  # no process drew a window (only with degenerate data)
                continue
            loss, _ = combine(loss_sums(heads, model, rows, cfg, pw_train, ctx.device), counts, model, cfg)
            opt.zero_grad(set_to_none=True)
            # Each process's loss is its rows' share of the global mean; DDP averages gradients
            # over processes, so scaling by their number gives the gradient of the global mean.
            scaled: Tensor = loss * ctx.world
            scaled.backward()  # type: ignore[no-untyped-call]  # torch's stub lacks annotations
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                _ema_update(ema, model, cfg.ema)
            total += loss.item() * float(counts[0])
            seen += float(counts[0])
            if not ctx.active:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        loop_s = time.monotonic() - started
        total = float(dist.all_reduce_sum(ctx, [total])[0])
        val = validate(kept, val_src, val_counts, cfg, ctx, pw_val, rul_cap)
        # Windows trained on (all processes) and the seconds it took: the throughput benchmarks read.
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / max(seen, 1.0),
                                 "lr": float(sched.get_last_lr()[0]), "windows": seen,
                                 "train_s": round(loop_s, 3), **val}
        state.curve.append(row)
        if show:
            line = (f"{cfg.progress_label}epoch {epoch + 1}/{last}: train {row['train_loss']:.4f} "
                    + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if cfg.progress_label:
                sys.stderr.write(line + "\n")  # one write: whole lines when processes share stderr
                sys.stderr.flush()
            else:
                tqdm.write(line, file=sys.stderr)
        score = val.get("val_rul_rmse", val["val_loss"]) if model.has_rul else val["val_loss"]
        if cfg.run_epochs:
            state.best_score, state.best_epoch = score, epoch + 1
            state.best_state = copy.deepcopy(kept.state_dict())
        elif score < state.best_score - 1e-4:
            state.best_score, state.best_epoch, state.stale = score, epoch + 1, 0
            state.best_state = copy.deepcopy(kept.state_dict())
        else:
            state.stale += 1
        state.epoch = epoch + 1
        if checkpoint is not None:
            if ctx.is_writer:
                ckpt.save(checkpoint, model, opt, sched, ema, state, asdict(cfg), contract or {})
            dist.barrier(ctx)
    model.load_state_dict(state.best_state)
    model.to("cpu").eval()
    result.best_score, result.epochs_run, result.best_epoch = state.best_score, state.epoch, state.best_epoch
    result.curve = state.curve
    return result


SCALE_WINDOWS = 20_000


def fit_trend_scale(model: Forecaster, source: WindowSource, counts: Census, cfg: TrainConfig,
                    ctx: dist.Dist, rul_cap: float) -> None:
    """Standardise a trend encoder's features by their mean and spread over training windows.

    The windows are a fixed thinning of the training assets (about SCALE_WINDOWS, the same
    whatever the number of processes), so the scale is part of what a seed reproduces.
    A model without the trend encoder is left as it is.
    """
    if model.trend is None:
        return
    sums: npt.NDArray[np.float64] | None = None
    with torch.no_grad():
        for rows in validation_rows(source, counts, ctx, cfg.shard_windows, SCALE_WINDOWS, rul_cap):
            f = model.trend_features(torch.from_numpy(rows.x).to(ctx.device)).double()
            part = torch.cat([f.sum(0), (f * f).sum(0), f.new_full((1,), float(len(f)))]).cpu().numpy()
            sums = part if sums is None else sums + part
    n_features = model.trend.wide.in_features
    total = dist.all_reduce_sum(ctx, sums if sums is not None else np.zeros(2 * n_features + 1))
    n = max(float(total[-1]), 1.0)
    mean = total[:n_features] / n
    var = np.maximum(total[n_features:2 * n_features] / n - mean * mean, 0.0)
    model.trend.fit_scale(torch.from_numpy(mean).float().to(ctx.device),
                          torch.from_numpy(np.sqrt(var)).float().to(ctx.device))


def _visible(path: Path, ctx: dist.Dist) -> bool:
    """Whether the checkpoint exists, for every process alike (each one loads it)."""
    seen = int(dist.all_reduce_sum(ctx, [float(path.exists())])[0])
    if 0 < seen < ctx.world:
        raise ValueError(f"checkpoint {path} is visible to {seen} of {ctx.world} processes; "
                         "put it on storage that every machine of the run sees")
    return seen > 0


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p, alpha=1.0 - decay)


def validate(model: Forecaster, source: WindowSource, counts: Census, cfg: TrainConfig, ctx: dist.Dist,
             pos_weight: float, rul_cap: float) -> dict[str, float]:
    """Validation loss and its parts (RUL RMSE in cells) in eval mode, without gradients.

    Each process scores its share of the validation assets; the sums are added up over
    processes, so every one of them gets the same figures (and takes the same decisions).
    """
    model.eval()
    sums, n = np.zeros(4), np.zeros(3)
    with torch.no_grad():
        for rows in validation_rows(source, counts, ctx, cfg.shard_windows, cfg.val_windows, rul_cap):
            sums += loss_sums(model.heads, model, rows, cfg, pos_weight, ctx.device).double().cpu().numpy()
            n += rows.counts()
    both = dist.all_reduce_sum(ctx, np.concatenate([sums, n]))
    loss, parts = combine(torch.from_numpy(both[:4]), both[4:], model, cfg)
    out = {"val_loss": float(loss)}
    out.update({f"val_{k}": float(parts[k]) for k in ("nll", "bce") if k in parts})
    if model.has_rul:
        out["val_rul"] = float(parts["rul"])
        out["val_rul_rmse"] = math.sqrt(float(parts["rul_mse"])) * rul_cap
    return out
