"""From history files to a calibrated model file and a validation summary.

Steps: load and grid the history, window and label it, split by asset or by time, put each
asset against its own baseline where assets differ, fit the normalisation on training rows
(per regime where there are several), train, calibrate on validation windows (temperature,
surprise, combiner, thresholds), export with the parity check, and write a summary (and a
report, if asked) beside the model.

With `stream`, the history is never held whole: it is streamed into a gridded cache
(`training.stream`), the normalisation fitted asset by asset; training draws from every
training asset a few at a time (`training.shards`), and what needs windows in memory
(calibration, metrics, VAE, GAN) takes a bounded, seeded choice of assets (`stream_cells`).
Under torchrun, every process trains its shards and rank 0 alone writes (`training.distributed`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from agent.runtime import load_model
from agent.spec import AssetProfile, Combiner, Distribution, ModelSpec, Normalisation, SurpriseStats
from training import baselines as base
from training import calibrate as cal
from training import distributed as dist
from training import level as lvl
from training import split as splits
from training import surprise as sur
from training.data import Event, Format, History, load_events, load_history
from training.evaluate import Evaluation, failure_cells, flat, metrics_of, score
from training.export import export
from training.gan import GanConfig, diversity, pre_failure, train_gan, with_synthetic
from training.labels import (
    Inputs,
    WindowSet,
    build_windows,
    fill_reach,
    fit_normalisation,
    healthy_mask,
    input_quantiles,
)
from training.model import Ensemble, Forecaster, ModelConfig, n_params
from training.regimes import Scaling
from training.source import MemorySource, WindowSource
from training.split import Split, SplitKind, split_by_asset
from training.stream import (
    DEFAULT_BUDGET,
    GridCache,
    StreamSource,
    Windowing,
    build_cache,
    events_by_asset,
    fit_statistics,
    pick_assets,
)
from training.train import TrainConfig, TrainResult, seed_everything, train
from training.vae import LstmVae, VaeConfig, VaeTrainConfig, WithAnomaly, train_vae
from training.vae import scores as vae_scores

# Without forecast heads there is no surprise signal; the spec still needs a valid placeholder.
NO_SURPRISE = SurpriseStats(1.0, (0.0, 1.0))
# The forecast's standard deviation is never below 0.1 training spreads (training/model.py).
LOGVAR_FLOOR = 2.0 * float(np.log(0.1))


@dataclass(frozen=True)
class FitOptions:
    history: Path
    out: Path
    events: Path | None = None
    fmt: Format = "long"
    channels: tuple[str, ...] | None = None
    regime_channels: tuple[str, ...] = ()
    n_regimes: int | None = None          # None: found from the data
    scaling: Scaling = "robust"
    clip: float = 30.0                    # normalised inputs beyond +-clip are clipped (0: never)
    split: SplitKind = "auto"             # by asset, by time within each asset, or auto
    baseline: base.BaselineKind = "auto"  # each asset against its own normal, one for all, or auto
    period_s: float | None = None
    window: int = 30
    horizon: int = 5
    fail_horizon: int = 1440
    max_gap: int = 5
    # Report by exception: a channel's last value fills the cells after it for this long (seconds),
    # as the agent's subscription `hold` does; recorded in the model file.
    hold_s: float = 0.0
    pad_start: bool = False
    rul_cap: float = 0.0                  # 0: no RUL head
    forecast: bool = True
    cell: str = "lstm"
    pool: str = "last"                    # or "attention" (training/model.py)
    encoder: str = "recurrent"            # or "trend" (training/trend.py)
    smooth: float = 0.0
    members: int = 1
    # Processes the members train in, side by side (None: min(members, threads)); each gets
    # threads // processes torch threads (at least 1). 1: one after the other in this process.
    member_processes: int | None = None
    # After training and calibrating, train each member again on training and validation assets
    # together for the epochs validation chose for it, and ship those (docs/training.md, Refit).
    refit: bool = False
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    head_hidden: int = 0
    epochs: int = 20
    windows_per_epoch: int = 40_000
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 4
    input_noise: float = 0.0
    ema: float = 0.0
    forecast_weight: float = 1.0
    fail_weight: float = 1.0
    rul_weight: float = 1.0
    huber_delta: float = 0.1
    val_fraction: float = 0.25
    test_fraction: float = 0.0
    # Validation assets named outright (cross-validation folds); None: drawn by seed with val_fraction.
    val_assets: tuple[str, ...] | None = None
    false_alarms_per_30_days: float = 1.0
    surprise_alpha: float = 0.5
    surprise_z_max: float = 30.0          # a channel's surprise z-score is capped here (0: never)
    level: bool = True                    # the state signal beside forecast surprise
    # LSTM-VAE anomaly scorer beside the forecaster, in the same file (docs/families.md).
    vae: bool = False
    vae_hidden: int = 32
    vae_latent: int = 8
    vae_epochs: int = 10
    vae_beta: float = 1.0
    # GAN augmentation of the failure head's positives (docs/families.md): "none" or "gan".
    augment: str = "none"
    gan_steps: int = 400
    gan_factor: float = 2.0               # synthetic windows per real pre-failure training window
    seed: int = 0
    threads: int = 2
    progress: bool = True
    checkpoint: Path | None = None
    resume: bool = False
    stop_after: int = 0
    report: Path | None = None
    stream: bool = False                  # stream the history through a cache on disk (docs/training.md)
    stream_budget: int = DEFAULT_BUDGET   # readings held in memory while streaming
    stream_cells: int = 1_000_000         # streaming: grid cells of whole assets each split takes into memory
    work_dir: Path | None = None          # streaming: the cache's folder (default: a temporary one)
    # Shards of training assets per epoch and windows a shard loads at a time (training/shards.py);
    # the number of processes under torchrun must divide `shards`.
    shards: int = 8
    shard_windows: int = 200_000


# The C-MAPSS preset's model, by encoder: the trend encoder is the preset since session 15
# (docs/training.md); `encoder="recurrent"` gives the LSTM preset of sessions 9-14.
CMAPSS_MODELS: dict[str, dict[str, Any]] = {
    "trend": dict(encoder="trend", hidden=64, dropout=0.2, members=5),
    "recurrent": dict(encoder="recurrent", hidden=64, dropout=0.0, members=3),
}


def cmapss_options(history: Path, out: Path, **overrides: Any) -> FitOptions:
    """The C-MAPSS preset (docs/training.md): 14 sensors and the cycle counter, regimes from the
    operating settings, window 120, RUL capped at 125 cycles, five trend MLPs averaged (trained
    apart), early stopping on validation engines, then each refit on all engines for its chosen
    epochs. `encoder="recurrent"` (implied by a `cell` or an attention `pool`) takes the three
    averaged 64-unit LSTMs of sessions 9-14 instead."""
    from training.cmapss import DEFAULT_CHANNELS, OP_SETTINGS

    # A cell or an attention pool only means something to the recurrent encoder: asking for one
    # picks it, as `--cell gru` did before the trend preset; asking for it with trend is refused.
    recurrent_only = "cell" in overrides or overrides.get("pool", "last") != "last"
    encoder = overrides.get("encoder", "recurrent" if recurrent_only else "trend")
    if encoder not in CMAPSS_MODELS:
        raise ValueError(f"encoder must be one of {sorted(CMAPSS_MODELS)}, got {encoder!r}")
    if encoder == "trend" and recurrent_only:
        raise ValueError("--cell and --pool attention need the recurrent encoder, not --encoder trend")
    base: dict[str, Any] = dict(
        history=history, out=out, fmt="cmapss", channels=DEFAULT_CHANNELS, regime_channels=OP_SETTINGS,
        window=120, horizon=5, fail_horizon=30, max_gap=0, pad_start=True, rul_cap=125.0, forecast=False,
        layers=1, head_hidden=0, smooth=0.0, refit=True, epochs=30, windows_per_epoch=100_000,
        batch_size=256, lr=2e-3, patience=10, forecast_weight=0.1, fail_weight=0.1, rul_weight=1.0,
        huber_delta=0.1, val_fraction=0.2, false_alarms_per_30_days=1.0, scaling="z", clip=0.0,
        split="asset", baseline="fleet", **CMAPSS_MODELS[encoder])
    base.update(overrides)
    return FitOptions(**base)


def load_data(opts: FitOptions) -> tuple[History, list[Event]]:
    """The history on its grid and its events (C-MAPSS brings its own failures)."""
    if opts.fmt == "cmapss":
        from training.cmapss import load_cmapss

        data = load_cmapss(opts.history, channels=opts.channels)
        return data.history, data.events + (load_events(opts.events) if opts.events else [])
    history = load_history(opts.history, fmt=opts.fmt, period_s=opts.period_s, channels=opts.channels)
    return history, load_events(opts.events) if opts.events else []


@dataclass(frozen=True)
class Prepared:
    """Labelled windows split by asset or by time, against their baselines, ready to train on."""

    history: History
    events: list[Event]
    ws: WindowSet
    split: Split
    train: WindowSet
    val: WindowSet
    test: WindowSet
    baselines: base.Baselines | None = None


def prepare(opts: FitOptions) -> Prepared:
    """Load, window, label, split (train / validation / optional test) and, where each asset gets
    its own baseline, measure every window against it."""
    history, events = load_data(opts)
    ws = build_windows(history, events, window=opts.window, horizon=opts.horizon,
                       fail_horizon=opts.fail_horizon, pad_start=opts.pad_start,
                       max_gap=fill_reach(opts.max_gap, opts.hold_s, history.period_s))
    if len(ws) == 0:
        raise ValueError(f"{opts.history}: no whole window of {opts.window} cells in the history"
                         f"{_too_short(opts, history)}")
    failing = {e.asset for e in events if e.event == "failure"}
    split = split_for(opts, ws, failing, history.period_s)
    baselines = None
    regime = _regime_index(opts, history.channels)
    if base.choose(opts.baseline, ws, split.mask(ws, "train"), regime):
        baselines = base.fit(ws, split.mask(ws, "train"), regime, history.period_s)
        ws = base.apply(ws, baselines)
    return Prepared(history, events, ws, split, ws.subset(split.mask(ws, "train")),
                    ws.subset(split.mask(ws, "val")), ws.subset(split.mask(ws, "test")), baselines)


def _too_short(opts: FitOptions, history: History) -> str:
    longest = max((len(s.grid) for s in history.assets), default=0)
    return (f" (the longest asset has {longest} cells of {history.period_s:g} s; a model needs whole "
            f"windows of {opts.window} cells, enough for training and validation: see --window)")


def split_for(opts: FitOptions, ws: WindowSet, failing: set[str], period_s: float = 1.0) -> Split:
    """The split: the named validation assets and the rest, a seeded split by asset, or each
    asset's last part by time (`--split`, auto by default)."""
    assets = tuple(ws.assets[a] for a in np.unique(ws.asset)) if len(ws) else ws.assets
    named = _named_split(opts, assets)
    if named is not None:
        return named
    if splits.choose(opts.split, assets, failing) == "asset":
        return split_by_asset(assets, failing, opts.val_fraction, opts.seed, opts.test_fraction)
    return splits.split_by_time(ws, opts.val_fraction, opts.test_fraction, period_s)


@dataclass(frozen=True)
class TrainingData:
    """What fit trains, calibrates and reports on, loaded in memory or streamed."""

    history: History          # channels, period, fingerprint; the grids of (at least) the validation assets
    events: list[Event]
    split: Split
    norm: Normalisation
    source: WindowSource      # the training assets' windows, by asset
    train: Inputs             # the training windows this process trains on
    train_windows: int        # training windows in all
    positives: int            # of them, windows with a failure within the horizon
    rul_labels: bool          # some training window has an RUL target
    quantiles: tuple[tuple[float, ...], ...]
    val: WindowSet
    test: WindowSet
    loader: dict[str, Any]    # streaming figures for the summary (empty in memory)
    seen: WindowSource | None = None  # training and validation windows together (for a refit)
    baselines: base.Baselines | None = None  # per-asset baselines, when each asset has its own


def _regime_index(opts: FitOptions, channels: tuple[str, ...]) -> tuple[int, ...]:
    unknown = [c for c in opts.regime_channels if c not in channels]
    if unknown:
        raise ValueError(f"regime channel(s) {unknown} are not among the channels {list(channels)}")
    return tuple(channels.index(c) for c in opts.regime_channels)


def _as_baselined(norm: Normalisation, channels: tuple[int, ...]) -> Normalisation:
    """The normalisation leaving baselined channels as their baselines made them (each asset's
    median at 0, its spread at 1): a second, pooled scaling on top would undo what makes assets
    comparable, and divide a channel pooled flat by a spread of nearly 0."""
    def ident(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        m, s = list(mean), list(std)
        for c in channels:
            m[c], s[c] = 0.0, 1.0
        return tuple(m), tuple(s)

    mean, std = ident(norm.mean, norm.std)
    regimes = [ident(m, s) for m, s in zip(norm.regime_mean, norm.regime_std, strict=True)]
    return replace(norm, mean=mean, std=std, regime_mean=tuple(m for m, _ in regimes),
                   regime_std=tuple(s for _, s in regimes))


def _named_split(opts: FitOptions, assets: tuple[str, ...]) -> Split | None:
    """The split by the validation assets named outright (cross-validation folds), if any."""
    if opts.val_assets is None:
        return None
    val = frozenset(opts.val_assets)
    if not val or not val < set(assets) or opts.test_fraction:
        raise ValueError(f"val_assets must name some, not all, of the history's assets, without a "
                         f"test fraction (unknown: {sorted(val - set(assets))})")
    return Split(frozenset(assets) - val, val)


def in_memory(opts: FitOptions) -> TrainingData:
    """The whole history in memory, windowed, split, and the normalisation fitted on the training split."""
    p = prepare(opts)
    norm = fit_normalisation(p.train, _regime_index(opts, p.history.channels), opts.n_regimes, opts.scaling,
                             opts.seed, opts.clip)
    if p.baselines is not None:
        norm = _as_baselined(norm, p.baselines.policy.channels)
    train = p.train.inputs(norm)
    rul = opts.rul_cap > 0 and bool(np.isfinite(p.train.rul_target(opts.rul_cap)).any())
    seen = None
    if opts.refit:
        both = p.split.mask(p.ws, "train") | p.split.mask(p.ws, "val")
        seen = MemorySource.of(p.ws.subset(both).inputs(norm), sorted(p.split.train | p.split.val))
    return TrainingData(p.history, p.events, p.split, norm, MemorySource.of(train, sorted(p.split.train)),
                        train, len(p.train), int(p.train.fail.sum()), rul, input_quantiles(p.train),
                        p.val, p.test, {}, seen, p.baselines)


def streamed(opts: FitOptions, work: Path, ctx: dist.Dist = dist.SINGLE) -> TrainingData:
    """The history streamed into a cache in `work`; the normalisation fitted asset by asset on the
    training split; each split's windows from a seeded choice of its assets, `stream_cells` at most.

    Under torchrun, one process per machine (local rank 0) builds the cache that its machine's
    processes share, and rank 0 fits the statistics that every process gets.
    """
    if opts.fmt == "cmapss":
        raise ValueError("--stream reads long or wide histories; C-MAPSS files load in memory")
    if opts.refit:
        raise ValueError("--refit needs the history in memory, not --stream")
    if ctx.local_rank == 0:
        cache = build_cache(opts.history, work, fmt=opts.fmt, period_s=opts.period_s, channels=opts.channels,
                            budget=opts.stream_budget, progress=opts.progress)
    dist.barrier(ctx)
    if ctx.local_rank != 0:
        cache = GridCache.open(work)
    events = load_events(opts.events) if opts.events else []
    failing = {e.asset for e in events if e.event == "failure"}
    if opts.split == "time" or opts.baseline == "asset":
        raise ValueError("--stream splits by asset and keeps one baseline for all assets: leave out "
                         "--split time and --baseline asset, or train in memory")
    split = _named_split(opts, cache.names) or split_by_asset(
        cache.names, failing, opts.val_fraction, opts.seed, opts.test_fraction)
    windowing = Windowing(opts.window, opts.horizon, opts.fail_horizon,
                          fill_reach(opts.max_gap, opts.hold_s, cache.period_s), opts.pad_start)
    stats = dist.broadcast(ctx, fit_statistics(
        cache, sorted(split.train), events, windowing, regime_channels=_regime_index(opts, cache.channels),
        n_regimes=opts.n_regimes, scaling=opts.scaling, seed=opts.seed, rul_cap=opts.rul_cap, clip=opts.clip)
        if ctx.is_writer else None)
    by_asset = events_by_asset(events)
    train, val, test = (StreamSource(cache, tuple(sorted(part)), by_asset, windowing, stats.norm)
                        for part in (split.train, split.val, split.test))

    def chosen(src: StreamSource, k: int) -> list[int]:
        return pick_assets([src.cells(i) for i in range(len(src.assets))], opts.stream_cells, opts.seed + k)

    train_idx, val_idx, test_idx = chosen(train, 0), chosen(val, 1), chosen(test, 2)
    shown = [val.assets[i] for i in val_idx] + [test.assets[i] for i in test_idx]
    loader = {**asdict(cache.stats), "assets": len(cache.names), "train_assets_drawn": len(train_idx),
              "val_assets_drawn": len(val_idx), "test_assets_drawn": len(test_idx)}
    return TrainingData(cache.history(shown), events, split, stats.norm, train, train.windows_of(train_idx),
                        stats.windows, stats.positives, stats.rul_labels, stats.quantiles,
                        val.window_set(val_idx), test.window_set(test_idx), loader)


@contextmanager
def _work_dir(opts: FitOptions, ctx: dist.Dist) -> Iterator[Path]:
    if opts.work_dir is not None:
        yield opts.work_dir
        return
    # A temporary folder named by rank 0 and made on every machine: a machine's processes share it.
    tmp = Path(dist.broadcast(ctx, tempfile.mkdtemp(prefix="vigil-stream-") if ctx.is_writer else None))
    if ctx.local_rank == 0:
        tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    finally:
        if ctx.local_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)


def fit(opts: FitOptions, ctx: dist.Dist = dist.SINGLE) -> tuple[ModelSpec, dict[str, Any]]:
    """Train, calibrate and export a model; return its spec and the summary written beside it.

    Under torchrun (`ctx` from `training.distributed.session`) every process trains its share;
    rank 0 alone calibrates, exports and writes, and every process returns its result.
    """
    if not opts.stream:
        return _fit(opts, in_memory, ctx)
    with _work_dir(opts, ctx) as work:
        return _fit(opts, lambda o: streamed(o, work, ctx), ctx)


def _fit(opts: FitOptions, load: Callable[[FitOptions], TrainingData], ctx: dist.Dist
         ) -> tuple[ModelSpec, dict[str, Any]]:
    t0 = time.monotonic()
    torch.set_num_threads(opts.threads)
    seed_everything(opts.seed)
    p = load(opts)
    history, norm = p.history, p.norm
    train_data, val_data = p.train, p.val.inputs(norm)
    if opts.augment not in ("none", "gan"):
        raise ValueError(f"augment must be none or gan, got {opts.augment!r}")
    if opts.refit and opts.augment != "none":
        raise ValueError("--refit does not go with --augment gan: the refit would train without "
                         "the synthetic windows")
    augment: dict[str, Any] = {}
    if opts.augment == "gan":
        # Only the training split goes in: validation and test assets never reach the generator.
        train_data, augment = _gan_augment(opts, train_data, ctx)
    has_fail = bool(p.positives > 0 and p.val.fail.sum() > 0)
    has_rul = p.rul_labels
    has_forecast = opts.forecast or not has_fail  # the agent needs one risk signal at least
    mcfg = ModelConfig(n_channels=len(history.channels), horizon=opts.horizon, hidden=opts.hidden,
                       layers=opts.layers, dropout=opts.dropout, fail_head=has_fail,
                       forecast_head=has_forecast, rul_head=has_rul, rul_cap=opts.rul_cap or 1.0,
                       head_hidden=opts.head_hidden, cell=opts.cell, smooth=opts.smooth,
                       pool=opts.pool, encoder=opts.encoder, window=opts.window, min_logvar=LOGVAR_FLOOR,
                       delta=True)
    tcfg = TrainConfig(
        epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay,
        windows_per_epoch=opts.windows_per_epoch, patience=opts.patience,
        forecast_weight=opts.forecast_weight, fail_weight=opts.fail_weight, rul_weight=opts.rul_weight,
        huber_delta=opts.huber_delta, input_noise=opts.input_noise, ema=opts.ema, seed=opts.seed,
        progress=opts.progress, stop_after=opts.stop_after, shards=opts.shards,
        shard_windows=opts.shard_windows)
    contract = {"channels": list(history.channels), "period_s": history.period_s, "window": opts.window,
                "horizon": opts.horizon, "fail_horizon": opts.fail_horizon, "rul_cap": opts.rul_cap,
                "normalisation": asdict(norm), "fingerprint": history.fingerprint}
    # Training draws from every training asset through the source (streamed: a shard's few
    # assets at a time); GAN windows exist only in memory, beside the windows they were made from.
    windows: Inputs | WindowSource = train_data if augment else p.source
    jobs = [MemberJob(k, mcfg, opts.seed + 1000 * k, windows, val_data, tcfg, mcfg.rul_cap,
                      _member_checkpoint(opts, k), opts.resume, contract, p.seen if opts.refit else None)
            for k in range(opts.members)]
    fitted = _fit_members(jobs, opts, ctx)
    results = [first for first, _ in fitted]
    for r in results:
        if not r.finished:
            raise ValueError(f"stopped after {r.epochs_run} epochs as asked (--stop-after); "
                             f"resume with --resume --checkpoint {opts.checkpoint}")
    model = _combined([r.model for r in results])
    result = results[0]
    shipped, refits = model, [again for _, again in fitted if again is not None]
    if refits:
        shipped = _combined([r.model for r in refits])
    if not ctx.is_writer:
        # Rank 0 calibrates, exports and writes the files; the others wait for what it returns.
        shared: tuple[ModelSpec, dict[str, Any]] = dist.broadcast(ctx, None)
        return shared
    vae, vae_summary = _fit_vae(opts, train_data, val_data) if opts.vae else (None, {})
    train_seconds = time.monotonic() - t0

    cal.return_freed_arrays()  # from here on, large arrays over the validation windows
    val_anomaly = vae_scores(vae, val_data) if vae is not None else None
    # Calibrated on validation assets by the model that never saw them; a refit inherits it.
    spec, pred = calibrate(model, opts, history, norm, val_data, p.events, val_anomaly, p.baselines,
                           p.train)
    temperature = float(cast(Tensor, model.temperature))  # a buffer: the type checker sees Tensor | Module
    cast(Tensor, shipped.temperature).fill_(temperature)
    heads = spec.heads
    val_scored = score(pred, temperature, spec, val_data, p.events)
    val_metrics = metrics_of(val_scored, p.val, spec)
    gan_metrics = {f"gan_{k}": float(v) for k, v in augment.items()
                   if k in ("windows", "spread_ratio", "nn_ratio")}
    spec = replace(spec, metrics={**flat(val_metrics), **gan_metrics},
                   input_quantiles=p.quantiles)
    probe = val_data.x(np.arange(min(len(p.val), 64)))
    served: torch.nn.Module = shipped if vae is None else WithAnomaly(shipped, vae)
    spec = export(served, spec, probe, opts.out)
    load_model(opts.out)  # the agent's own checks: metadata, shapes, finite outputs
    summary: dict[str, Any] = {
        "model": str(opts.out), "version": spec.version, "heads": list(heads),
        "train_assets": sorted(p.split.train), "val_assets": sorted(p.split.val),
        "test_assets": sorted(p.split.test), "train_windows": p.train_windows, "val_windows": len(p.val),
        "split": p.split.kind, "baselines": _baseline_summary(p.baselines),
        "period_s": history.period_s, "regimes": max(norm.n_regimes, 1), "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "best_val_score": round(result.best_score, 5),
        "members": [{"epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
                     "best_val_score": round(r.best_score, 5)} for r in results],
        "member_processes": member_processes(opts, ctx),
        # Validation figures above are the first fit's; the shipped members are these refits.
        **({"refit": {"assets": len(p.split.train | p.split.val),
                      "epochs_run": [r.epochs_run for r in refits]}} if refits else {}),
        "temperature": temperature, "thresholds": asdict(spec.thresholds),
        "combiner": asdict(spec.combiner), "validation": val_metrics,
        "train_seconds": round(train_seconds, 1), "params": n_params(served),
        **({"vae": vae_summary} if vae is not None else {}),
        **({"augment": augment} if augment else {}),
        **({"stream": p.loader} if p.loader else {}),
        "model_config": asdict(mcfg), "curve": result.curve,
        "warnings": _warnings(results),
    }
    for w in summary["warnings"]:
        print(f"vigil-train: warning: {w}", file=sys.stderr, flush=True)
    if len(p.test):
        summary["test"] = _test_metrics(opts.out, p, spec)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary_text = json.dumps(summary, indent=2, default=float) + "\n"
    Path(opts.out).with_suffix(".summary.json").write_text(summary_text)
    if opts.report is not None:
        from training.report import render

        render(Evaluation(spec, history, p.events, p.val, val_scored, val_metrics), opts.report,
               title="Vigil model: validation assets")
    dist.broadcast(ctx, (spec, summary))
    return spec, summary


@dataclass(frozen=True)
class MemberJob:
    """One member's training: its config and seed, the data, and (with `seen`) its refit."""

    k: int
    config: ModelConfig
    seed: int                             # the run's seed + 1000 k (member 0: the run's own)
    windows: Inputs | WindowSource
    val: Inputs
    tcfg: TrainConfig
    rul_cap: float
    checkpoint: Path | None
    resume: bool
    contract: dict[str, Any]
    seen: Inputs | WindowSource | None    # training and validation assets: refit on them
    threads: int = 0                      # torch threads in a worker process (0: leave as they are)


def fit_member(job: MemberJob, ctx: dist.Dist = dist.SINGLE) -> tuple[TrainResult, TrainResult | None]:
    """Train one member with early stopping on validation; then, with `job.seen`, the same member
    (seed, schedule) again on every asset it may learn from, for the epochs validation chose:
    the choice was made on held-out assets, the shipped weights see them all."""
    first = first_fit(job, ctx)
    return first, refit_member(job, first.best_epoch, ctx) if _refits(job, first) else None


def _refits(job: MemberJob, first: TrainResult) -> bool:
    """A member is refitted when the run asks for it and its first fit ran to its end."""
    return job.seen is not None and first.finished


def _start(job: MemberJob) -> None:
    """Threads and seed as the job asks: a member's weights depend only on its job."""
    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)


def first_fit(job: MemberJob, ctx: dist.Dist = dist.SINGLE) -> TrainResult:
    """Member `job.k` trained on the training assets, early-stopped on the validation ones."""
    _start(job)
    return train(Forecaster(job.config), job.windows, job.val, replace(job.tcfg, seed=job.seed), job.rul_cap,
                 checkpoint=job.checkpoint, resume=job.resume, contract=job.contract, ctx=ctx)


def refit_member(job: MemberJob, epochs: int, ctx: dist.Dist = dist.SINGLE) -> TrainResult:
    """Member `job.k` again, from its seed, on `job.seen` for `epochs` epochs (at least one)."""
    assert job.seen is not None, "a refit needs the assets to refit on"
    _start(job)
    label = job.tcfg.progress_label and f"{job.tcfg.progress_label}refit, "
    return train(Forecaster(job.config), job.seen, job.val, replace(
        job.tcfg, seed=job.seed, run_epochs=max(epochs, 1), stop_after=0, progress_label=label),
        job.rul_cap, ctx=ctx)


def _fit_members(jobs: list[MemberJob], opts: FitOptions, ctx: dist.Dist
                 ) -> list[tuple[TrainResult, TrainResult | None]]:
    """Every member's fit (and refit), in member order.

    Members are independent, so with several threads they train side by side in worker
    processes of one thread each: a second thread speeds one 64-unit LSTM up 1.4-1.6x, a
    second process trains a second member at full speed (bench/members.py, docs/training.md).
    A first fit and its refit are separate tasks, queued as they become ready, so an odd member
    out shares the workers with the others' refits instead of training alone at the end.
    A member's result depends only on its job, not on which process ran it. Under torchrun,
    or streaming, they train one after the other in this process.
    """
    workers = member_processes(opts, ctx)
    if workers <= 1:
        return [fit_member(job, ctx) for job in jobs]
    jobs = [replace(job, threads=max(opts.threads // workers, 1),
                    tcfg=replace(job.tcfg, progress_label=f"member {job.k}: ")) for job in jobs]
    if opts.progress:
        print(f"training {len(jobs)} members in {workers} processes", file=sys.stderr, flush=True)
    firsts: dict[int, TrainResult] = {}
    again: dict[int, TrainResult | None] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        pending: dict[Future[TrainResult], tuple[MemberJob, bool]] = {
            pool.submit(first_fit, job): (job, False) for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job, is_refit = pending.pop(future)
                if is_refit:
                    again[job.k] = future.result()
                    continue
                first = firsts[job.k] = future.result()
                if opts.progress:
                    print(f"member {job.k}: {first.epochs_run} epochs, best {first.best_epoch} "
                          f"(validation {first.best_score:.4f})", file=sys.stderr, flush=True)
                if _refits(job, first):
                    pending[pool.submit(refit_member, job, first.best_epoch)] = (job, True)
    return [(firsts[job.k], again.get(job.k)) for job in jobs]


def _exit_with_parent(parent: int) -> None:
    """Worker initialiser: exit once the parent (its pid passed in: it may be dead already by
    the time a worker has imported torch) is gone.

    A parent killed outright (`kill PID`, the OOM killer) cannot stop its pool; its workers
    would go on training members for nobody, then wait forever on a dead queue, each holding
    its share of the CPU and its copy of the windows.
    """

    def watch() -> None:
        while os.getppid() == parent:  # orphans are handed to init (or a subreaper)
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def member_processes(opts: FitOptions, ctx: dist.Dist = dist.SINGLE) -> int:
    """How many processes the members train in (1: this one)."""
    if ctx.world > 1 or opts.stream:
        return 1
    if opts.member_processes is not None and opts.member_processes < 1:
        raise ValueError(f"member_processes must be 1 or more, got {opts.member_processes}")
    return min(opts.members, opts.member_processes or opts.threads)


def _member_checkpoint(opts: FitOptions, k: int) -> Path | None:
    """Member k's checkpoint file: the one asked for, or beside it per member of an ensemble."""
    ck = opts.checkpoint
    if ck is not None and opts.members > 1:
        ck = ck.with_name(f"{ck.stem}.m{k}{ck.suffix}")
    return ck


def _combined(members: list[Forecaster]) -> Forecaster | Ensemble:
    return members[0] if len(members) == 1 else Ensemble(members).eval()


def calibrate(model: Forecaster | Ensemble, opts: FitOptions, history: History, norm: Any, val_data: Inputs,
              events: list[Event], anomaly: npt.NDArray[np.float32] | None = None,
              baselines: base.Baselines | None = None, train_data: Inputs | None = None
              ) -> tuple[ModelSpec, cal.Predictions]:
    """Calibrate on validation windows only, replaying what the agent will do; the spec before export.

    `anomaly`: the VAE's scores of the validation windows, when the model file will carry one.
    `baselines`: each asset's own baseline, when the model measures assets against their own.
    `train_data`: the training windows, whose healthy rows define the state signal's healthy state.
    """
    val_ws = val_data.ws
    pred = cal.predict(model, val_data)
    temperature = cast(Tensor, model.temperature)  # a buffer
    if model.has_fail:
        temperature.fill_(cal.fit_temperature(pred.logit, val_ws.fail))
    pf = cal.fail_probabilities(pred.logit, float(temperature)) if model.has_fail else None
    anomaly_stats, pa = None, None
    if anomaly is not None:
        pred = replace(pred, anomaly=anomaly)
        anomaly_stats = cal.fit_anomaly(anomaly, healthy_mask(val_ws, _healthy_margin(opts)))
        pa = cal.anomaly_probabilities(anomaly, anomaly_stats)
    own: dict[str, SurpriseStats] = {}
    # Healthy: no failure within the horizon, nor the wear that may show up to a few before one.
    healthy = healthy_mask(val_ws, _healthy_margin(opts))
    if model.has_forecast:
        surprise, own, ps = _surprise(opts, val_ws, pred, healthy)
    else:
        surprise, ps = NO_SURPRISE, np.full(len(val_ws), np.nan)
    # The state signal is for models without failure labels: with them, the failure head learns
    # from the same windows which states lead to a failure within the horizon, and which do not.
    level = None if train_data is None or not opts.level or pf is not None else lvl.fit_level(
        train_data, val_data, healthy, _healthy_margin(opts), opts.surprise_alpha, opts.surprise_z_max,
        opts.seed, _per_asset(val_ws))
    pl = None if level is None else level[2]
    fc = failure_cells(val_ws, events, history.period_s)
    budget = opts.false_alarms_per_30_days / 30.0
    # With failure labels, risk is the calibrated failure probability itself, or the logistic
    # combination of every signal: whichever alerts better on the validation replay.
    options = [Combiner(1.0, 0.0, 0.0)] if pf is not None else []
    if pf is None or model.has_forecast or pa is not None:
        options.append(cal.fit_combiner(pf, ps, val_ws.fail, pa, pl))
    judged = []
    for c in options:
        risk = cal.risks(pf, ps, c, pa, pl)
        t = cal.calibrate_thresholds(val_ws, risk, history.period_s, opts.fail_horizon, fc, budget,
                                     healthy_mask=healthy)
        judged.append((cal.alerting(cal.replay_levels(val_ws, risk, t, history.period_s, opts.fail_horizon,
                                                      fc)), c, t))
    _, combiner, thresholds = max(judged, key=lambda j: j[0])  # the first of equals: the simpler
    heads = (("forecast_mean", "forecast_logvar") if model.has_forecast else ()) + (
        ("fail_prob",) if model.has_fail else ()) + (("rul",) if model.has_rul else ()) + (
        ("anomaly_nll",) if anomaly is not None else ())
    spec = ModelSpec(
        channels=history.channels, period_s=history.period_s, window=opts.window, horizon=opts.horizon,
        fail_horizon=opts.fail_horizon, normalisation=norm, heads=heads, thresholds=thresholds,
        surprise=surprise, combiner=combiner, fingerprint=history.fingerprint,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        rul_cap=float(model.rul_cap) if model.has_rul else 0.0, anomaly=anomaly_stats,
        level=None if level is None else level[0],
        baseline=None if baselines is None else baselines.policy,
        profiles=_profiles(baselines, own, {} if level is None else level[1]), hold_s=opts.hold_s)
    return spec, pred


def _surprise(opts: FitOptions, ws: WindowSet, pred: cal.Predictions, healthy: npt.NDArray[np.bool_]
              ) -> tuple[SurpriseStats, dict[str, SurpriseStats], npt.NDArray[np.float64]]:
    """The fleet's surprise statistics, each asset's own where it has enough healthy validation
    windows, and every validation window's surprise probability under them."""
    fleet_scale, own_scale = sur.residual_scales(ws, pred, healthy, _per_asset(ws))
    fleet0 = SurpriseStats(opts.surprise_alpha, (0.0, 1.0), () if fleet_scale is None else
                           tuple(map(float, fleet_scale)), None, opts.surprise_z_max)
    own0 = {a: replace(fleet0, residual_scale=tuple(map(float, sc))) for a, sc in own_scale.items()}
    scores = sur.surprise_scores(ws, pred, fleet0, own0)
    fleet = sur.fit_surprise(scores, healthy, opts.surprise_alpha, fleet_scale, opts.surprise_z_max)
    own = {a: sur.fit_surprise(scores, healthy & (ws.asset == ws.assets.index(a)), opts.surprise_alpha,
                               np.asarray(st.residual_scale), opts.surprise_z_max)
           for a, st in own0.items()}
    return fleet, own, sur.surprise_probabilities(scores, fleet, ws, own)


def _per_asset(ws: WindowSet) -> bool:
    """Whether validation assets get statistics of their own: not in a fleet too large for the
    model file to carry one profile per asset (they share the fleet's)."""
    return len(np.unique(ws.asset)) <= base.MAX_PROFILES


def _profiles(baselines: base.Baselines | None, own: dict[str, SurpriseStats],
              own_level: dict[str, Distribution]) -> dict[str, AssetProfile]:
    """Per asset, what the model file keeps of it: its baseline, its own surprise statistics and
    its own distribution of the state signal."""
    known = {} if baselines is None else {**{a: b for a, (b, _) in baselines.learned.items()},
                                          **baselines.known}
    return {a: AssetProfile(known.get(a), own.get(a), own_level.get(a))
            for a in sorted(set(known) | set(own) | set(own_level))}


def _gan_augment(opts: FitOptions, train_data: Inputs, ctx: dist.Dist) -> tuple[Inputs, dict[str, Any]]:
    """Train the WGAN-GP on the training split's pre-failure windows and add its windows as positives.

    Rank 0 trains it; every process trains on the windows it made.
    """
    if not ctx.is_writer:
        synthetic, info = dist.broadcast(ctx, None)
        return with_synthetic(train_data, synthetic), info
    real, sources = pre_failure(train_data)
    if len(real) < 2:
        raise ValueError("--augment gan needs failures in the training assets (pre-failure windows)")
    t0 = time.monotonic()
    gan = train_gan(real, GanConfig(steps=opts.gan_steps, seed=opts.seed))
    synthetic = gan.sample(round(opts.gan_factor * len(real)), seed=opts.seed + 1)
    div = diversity(synthetic, real, opts.seed)
    info = {
        "method": "wgan-gp", "real_windows": len(real), "windows": len(synthetic),
        "source_assets": list(sources), "steps": opts.gan_steps, "seconds": round(time.monotonic() - t0, 1),
        "real_spread": round(div.real_spread, 4), "generated_spread": round(div.generated_spread, 4),
        "spread_ratio": round(div.spread_ratio, 4), "nn_ratio": round(div.nn_ratio, 4),
        "collapsed": div.collapsed, "final_critic_loss": round(gan.critic_loss[-1], 4)}
    dist.broadcast(ctx, (synthetic, info))
    return with_synthetic(train_data, synthetic), info


def _warnings(results: list[TrainResult]) -> list[str]:
    """What a user should look at before trusting the model."""
    out = []
    for k, r in enumerate(results):
        who = f"member {k}: " if len(results) > 1 else ""
        if r.best_epoch == 1 and r.epochs_run > 1:
            out.append(f"{who}the best validation score came at the first of {r.epochs_run} epochs: later "
                       "epochs did worse on validation (validation data unlike the training data, or a "
                       "learning rate too high for this data); the model shipped is that first epoch's")
    return out


def _baseline_summary(b: base.Baselines | None) -> dict[str, Any]:
    if b is None:
        return {"per_asset": False}
    return {"per_asset": True, "learn_cells": b.policy.cells, "known": len(b.known), "learnt": len(b.learned)}


def _healthy_margin(opts: FitOptions) -> float:
    """Windows this many cells or more before a failure count as healthy for the VAE (and its calibration):
    past the RUL plateau, and three failure horizons, where degradation may already show."""
    return max(opts.rul_cap, 3.0 * opts.fail_horizon)


def _fit_vae(opts: FitOptions, train_data: Inputs, val_data: Inputs) -> tuple[LstmVae, dict[str, Any]]:
    """Train the LSTM-VAE on healthy training windows (seeded apart from the forecaster)."""
    margin = _healthy_margin(opts)
    tr_idx = np.flatnonzero(healthy_mask(train_data.ws, margin))
    va_idx = np.flatnonzero(healthy_mask(val_data.ws, margin))
    torch.manual_seed(opts.seed + 7919)
    vae = LstmVae(VaeConfig(n_channels=train_data.ws.cells.shape[1], hidden=opts.vae_hidden,
                            latent=opts.vae_latent))
    res = train_vae(vae, train_data, tr_idx, val_data, va_idx, VaeTrainConfig(
        epochs=opts.vae_epochs, windows_per_epoch=min(opts.windows_per_epoch, 20_000),
        batch_size=opts.batch_size, beta=opts.vae_beta, seed=opts.seed, progress=opts.progress))
    return vae, {"train_windows": res.train_windows, "val_windows": len(va_idx),
                 "best_epoch": res.best_epoch, "best_val_neg_elbo": round(res.best_score, 4),
                 "params": n_params(vae), "healthy_margin_cells": margin, "curve": res.curve}


def _test_metrics(model_path: Path, p: TrainingData, spec: ModelSpec) -> dict[str, Any]:
    """The held-out test assets scored through the exported file, as `evaluate` would."""
    from agent.runtime import load_model as load
    from training.evaluate import predict_runtime

    data = p.test.inputs(spec.normalisation)
    scored = score(predict_runtime(load(model_path), data), 1.0, spec, data, p.events)
    return metrics_of(scored, p.test, spec)


__all__ = ["FitOptions", "Prepared", "TrainResult", "TrainingData", "cmapss_options", "fit", "in_memory",
           "prepare", "streamed"]
