"""The shadow model: a candidate scored on the live batches, its levels decided but never sent.

Its transitions feed the same lead-time and false-alarm accounting as the live model's, so
the two can be compared on the plant's own failures before `vigil-agent promote` swaps the
candidate in (by replacing the live model file: the hot-swap path checks and loads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.baseline import BaselineLearner
from agent.config import AgentConfig
from agent.errors import ModelError
from agent.files import install_file
from agent.risk import Level, LevelMachine, SurpriseTracker, in_force
from agent.runtime import Expected, Runtime, load_runtime
from agent.scoring import Scorer
from agent.spec import Baseline

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
    """Per-asset surprise, baseline and level state of the shadow model, fed the live model's
    batches, scored by the same `Scorer` as the live model."""

    def __init__(self, runtime: Runtime, max_assets: int, sensitivity: float = 1.0) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.max_assets = max_assets
        self.scorer = Scorer(self.spec)  # once per model, as the pipeline
        self.thresholds = in_force(self.spec.thresholds, sensitivity)
        self.levels: dict[str, LevelMachine] = {}
        self.surprise: dict[str, SurpriseTracker] = {}
        self.baselines: dict[str, Baseline | BaselineLearner] = {}

    def forget(self, asset: str) -> None:
        """The asset restarts (repair): its shadow level starts at ok again."""
        self.levels.pop(asset, None)
        self.surprise.pop(asset, None)
        self.baselines.pop(asset, None)

    def _baseline(self, asset: str, end: int, window: npt.NDArray[np.floating[Any]]
                  ) -> Baseline | bool | None:
        """The asset's baseline under the shadow model (None: it has no per-asset baselines);
        False while one is still being learnt."""
        policy = self.spec.baseline
        if policy is None:
            return None
        b = self.baselines.get(asset)
        if b is None:
            profile = self.spec.profiles.get(asset)
            b = self.baselines[asset] = (profile.baseline if profile is not None and profile.baseline
                                         is not None else BaselineLearner(policy))
        if isinstance(b, BaselineLearner):
            return b.baseline if b.update(end, window) else False
        return b

    def learn(self, asset: str, end: int, window: npt.NDArray[np.floating[Any]]) -> None:
        """A window the live model did not score (its asset still learning its baseline): the
        shadow learns from it too, so that both learn from the same cells."""
        if asset in self.baselines or len(self.baselines) < self.max_assets:
            self._baseline(asset, end, window)

    def score(self, names: list[str], ends: list[int], stamps: list[float], raw: FloatArray,
              decide: list[bool]) -> list[ShadowTransition]:
        """Score raw windows [B, W, C]; decide levels where `decide` says so."""
        keep: list[int] = []
        baselines: list[Baseline | None] = []
        for i, asset in enumerate(names):
            if asset not in self.levels:
                if len(self.levels) >= self.max_assets:
                    continue
                self.levels[asset] = LevelMachine(self.thresholds)
                self.surprise[asset] = self.scorer.tracker()
            b = self._baseline(asset, ends[i], raw[i])
            if b is False:
                continue
            keep.append(i)
            baselines.append(b if isinstance(b, Baseline) else None)
        if not keep:
            return []
        assets = [names[i] for i in keep]
        x = self.scorer.normalise(raw[keep], baselines)
        scored = self.scorer.score(assets, self.runtime.infer(x), x, [self.surprise[a] for a in assets],
                                   [ends[i] for i in keep])
        moves: list[ShadowTransition] = []
        for i, asset, sc in zip(keep, assets, scored, strict=True):
            if sc.risk != sc.risk or not decide[i]:
                continue
            tr = self.levels[asset].update(sc.risk, ends[i])
            if tr is not None:
                moves.append(ShadowTransition(asset, tr.cell, stamps[i], tr.level, tr.previous, sc.risk))
        return moves


def load_shadow(cfg: AgentConfig, live: Runtime) -> Runtime | None:
    """The shadow model, checked to read what the live model reads: `[model.shadow] path`, or
    the learning loop's `models/shadow.pt` in the state directory when there is one; else None."""
    path = cfg.shadow_path
    if cfg.model.shadow is None and not path.exists():
        return None
    model = cfg.model.model_copy(update={"path": path, "sha256": None})
    rt = load_runtime(model, Expected(channels=live.spec.channels, period_s=live.spec.period_s))
    if rt.spec.window != live.spec.window:
        raise ModelError(f"shadow model {path}: window {rt.spec.window} differs "
                         f"from the live model's {live.spec.window}")
    return rt


def promote(cfg: AgentConfig) -> Runtime:
    """Make the shadow model the live one: check it, then replace the live model file atomically.

    The previous live file is kept beside it as `<name>.previous`. A running agent sees the new
    file and swaps it in through its hot-swap path (checks, then between batches).
    """
    live_path, shadow_path = Path(cfg.model.path), cfg.shadow_path
    if cfg.model.shadow is None and not shadow_path.exists():
        raise ModelError("no shadow model ([model.shadow] path, or a refit's models/shadow.pt): "
                         "nothing to promote")
    model = cfg.model.model_copy(update={"path": shadow_path, "sha256": None})
    rt = load_runtime(model)
    if cfg.model.sha256 and cfg.model.sha256.lower() != rt.sha256:
        raise ModelError("[model] sha256 pins the live file: the agent would refuse the shadow model; "
                         "update the pin first")
    if live_path.exists():
        install_file(live_path, live_path.with_name(live_path.name + ".previous"))
    install_file(shadow_path, live_path)  # atomic: the watcher never reads half a file
    return rt
