"""The shadow model: a candidate scored on the live batches, its levels decided but never sent.

Its transitions feed the same lead-time and false-alarm accounting as the live model's, so
the two can be compared on the plant's own failures before `vigil-agent promote` swaps the
candidate in (by replacing the live model file: the hot-swap path checks and loads it).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.config import AgentConfig
from agent.errors import ModelError
from agent.risk import EmpiricalCdf, Level, LevelMachine, SurpriseTracker, combine
from agent.runtime import Expected, Runtime, load_runtime

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ShadowTransition:
    """A level change of the shadow model (never published; accounted for)."""

    asset: str
    cell: int
    ts: float
    level: Level
    previous: Level
    risk: float


class ShadowScorer:
    """Per-asset surprise and level state of the shadow model, fed the live model's batches."""

    def __init__(self, runtime: Runtime, max_assets: int) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.max_assets = max_assets
        self.levels: dict[str, LevelMachine] = {}
        self.surprise: dict[str, SurpriseTracker] = {}
        self._surprise_cdf = EmpiricalCdf(self.spec.surprise.quantiles)  # once per model, as the pipeline

    def forget(self, asset: str) -> None:
        """The asset restarts (repair): its shadow level starts at ok again."""
        self.levels.pop(asset, None)
        self.surprise.pop(asset, None)

    def score(self, names: list[str], ends: list[int], stamps: list[float], raw: FloatArray,
              decide: list[bool]) -> list[ShadowTransition]:
        """Score raw windows [B, W, C]; decide levels where `decide` says so."""
        s = self.spec
        x = s.normalise(raw)
        out = self.runtime.infer(x)
        moves: list[ShadowTransition] = []
        for i, asset in enumerate(names):
            lm = self.levels.get(asset)
            if lm is None:
                if len(self.levels) >= self.max_assets:
                    continue
                lm = self.levels[asset] = LevelMachine(s.thresholds)
                self.surprise[asset] = SurpriseTracker(s.surprise.ewma_alpha)
            p_surprise = None
            if out.forecast_mean is not None and out.forecast_logvar is not None:
                per_channel = self.surprise[asset].update(
                    ends[i], x[i, -s.horizon:].astype(np.float64), out.forecast_mean[i].astype(np.float32),
                    out.forecast_logvar[i].astype(np.float32))  # kept as float32, as in the pipeline
                if per_channel is not None:
                    p_surprise = float(self._surprise_cdf(np.asarray(np.mean(per_channel))))
            p_fail = float(out.fail_prob[i]) if out.fail_prob is not None else None
            risk = combine(p_fail, p_surprise, s.combiner)
            if risk != risk or not decide[i]:
                continue
            tr = lm.update(risk, ends[i])
            if tr is not None:
                moves.append(ShadowTransition(asset, tr.cell, stamps[i], tr.level, tr.previous, risk))
        return moves


def load_shadow(cfg: AgentConfig, live: Runtime) -> Runtime | None:
    """The `[model.shadow]` model, checked to read what the live model reads; None if unset."""
    if cfg.model.shadow is None:
        return None
    model = cfg.model.model_copy(update={"path": cfg.model.shadow.path, "sha256": None})
    rt = load_runtime(model, Expected(channels=live.spec.channels, period_s=live.spec.period_s))
    if rt.spec.window != live.spec.window:
        raise ModelError(f"shadow model {cfg.model.shadow.path}: window {rt.spec.window} differs "
                         f"from the live model's {live.spec.window}")
    return rt


def promote(cfg: AgentConfig) -> Runtime:
    """Make the shadow model the live one: check it, then replace the live model file atomically.

    The previous live file is kept beside it as `<name>.previous`. A running agent sees the new
    file and swaps it in through its hot-swap path (checks, then between batches).
    """
    if cfg.model.shadow is None:
        raise ModelError("no [model.shadow] path in the config: nothing to promote")
    live_path, shadow_path = Path(cfg.model.path), Path(cfg.model.shadow.path)
    model = cfg.model.model_copy(update={"path": shadow_path, "sha256": None})
    rt = load_runtime(model)
    if cfg.model.sha256 and cfg.model.sha256.lower() != rt.sha256:
        raise ModelError("[model] sha256 pins the live file: the agent would refuse the shadow model; "
                         "update the pin first")
    tmp = live_path.with_name(live_path.name + ".promote")
    shutil.copyfile(shadow_path, tmp)
    if live_path.exists():
        prev = live_path.with_name(live_path.name + ".previous")
        shutil.copyfile(live_path, prev)
    os.replace(tmp, live_path)  # atomic: the watcher never reads half a file
    return rt
