"""A synthetic plant of centrifugal pumps whose hidden health decays towards failure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from agent.errors import ConfigError

CHANNELS: Final[tuple[str, ...]] = (
    "bearing_temp",  # degC
    "vib_rms",  # mm/s
    "motor_current",  # A
    "discharge_pressure",  # bar
    "speed",  # rpm
)
FAILURE: Final = "failure"
MAINTENANCE: Final = "maintenance"

HOUR: Final = 3600.0
DAY: Final = 86400.0

Event: TypeAlias = tuple[float, str, str]
"""(ts, asset, event) with event `failure` or `maintenance`."""

FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

_TEMP, _VIB, _CURRENT, _PRESSURE, _SPEED = range(len(CHANNELS))
# Sensor noise (1 sigma) per channel, in CHANNELS order, before PlantConfig.noise scaling.
_SENSOR_SIGMA: Final = np.array([0.25, 0.05, 0.3, 0.04, 3.0])
_RATED_RPM: Final = 1480.0
_RAMP_TAU_S: Final = 20 * 60.0  # load follows a regime change over tens of minutes
_POINT_RAMP_TAU_S: Final = 60.0  # ... but a duty point is reached within minutes
_THERMAL_TAU_S: Final = 40 * 60.0  # bearing housing heats and cools slowly
_SPIKE_PROB: Final = 0.002  # per reading; healthy assets spike too, so a spike is not a failure
# Sensors quantise; three decimals keep files short and live equal to history.
_DECIMALS: Final = 3


def asset_name(i: int) -> str:
    """Name of the asset with 0-based index `i`: pump-001, pump-002, ..."""
    return f"pump-{i + 1:03d}"


@dataclass(frozen=True)
class PlantConfig:
    """How many pumps, how often they report, and how they wear out."""

    n_assets: int
    period_s: float = 60.0
    seed: int = 0
    onset_mean_s: float = 5 * DAY
    """Mean healthy running time before degradation starts (exponential waiting time)."""
    life_min_s: float = 1 * DAY
    """Shortest time from degradation onset to failure (drawn log-uniform up to life_max_s)."""
    life_max_s: float = 4 * DAY
    shape: float = 2.0
    """h = 1 - (elapsed / life) ** shape: above 1 the decay starts subtle and accelerates."""
    downtime_min_s: float = 4 * HOUR
    downtime_max_s: float = 12 * HOUR
    regime_mean_s: float = 3 * HOUR
    """Mean time between operating-load changes."""
    operating_points: int = 0
    """0: the load moves to any level between half and full load, over tens of minutes; N: only
    to N fixed levels evenly spread over that range, within minutes (operating conditions, as a
    machine with a few duty points or C-MAPSS FD002/FD004's six flight conditions), which set
    sensor levels far more than wear does."""
    noise: float = 1.0
    """Multiplies every channel's sensor noise."""

    def __post_init__(self) -> None:
        if self.n_assets < 1:
            raise ConfigError(f"n_assets must be at least 1, got {self.n_assets}")
        positive = {
            "period_s": self.period_s,
            "onset_mean_s": self.onset_mean_s,
            "life_min_s": self.life_min_s,
            "shape": self.shape,
            "downtime_min_s": self.downtime_min_s,
            "regime_mean_s": self.regime_mean_s,
        }
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number, got {value}")
        if not self.life_max_s >= self.life_min_s:
            raise ConfigError("life_max_s must be at least life_min_s")
        if not self.downtime_max_s >= self.downtime_min_s:
            raise ConfigError("downtime_max_s must be at least downtime_min_s")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"noise must be a non-negative number, got {self.noise}")
        if self.operating_points < 0:
            raise ConfigError(f"operating_points must be 0 or more, got {self.operating_points}")

    @property
    def asset_names(self) -> tuple[str, ...]:
        """Every asset's name, in index order."""
        return tuple(asset_name(i) for i in range(self.n_assets))


@dataclass(frozen=True)
class Step:
    """All assets' readings at one timestamp; rows of `values` where `up` is False are NaN."""

    ts: float
    values: FloatArray  # [n_assets, len(CHANNELS)]
    up: BoolArray  # [n_assets]
    events: list[Event] = field(default_factory=list)


class Plant:
    """Steps every asset forward one sample period at a time, vectorised over assets."""

    def __init__(self, cfg: PlantConfig, start_ts: float) -> None:
        self.cfg = cfg
        self.start_ts = float(start_ts)
        self._names = cfg.asset_names
        self._rng = np.random.default_rng(cfg.seed)
        n = cfg.n_assets
        rng = self._rng
        # Per-asset build differences, so no single absolute threshold fits every pump.
        self._vib_base = rng.uniform(1.4, 2.4, n)
        self._ambient_offset = rng.uniform(-3.0, 3.0, n)
        self._rated_current = rng.uniform(36.0, 44.0, n)
        self._rated_pressure = rng.uniform(5.5, 6.5, n)
        self._heat_rise = rng.uniform(24.0, 34.0, n)
        # Operating state.
        self._target = self._load_level(rng.uniform(0.0, 1.0, n))
        self._load = self._target.copy()
        heat = self._heat_rise * self._current_frac(self._load) ** 2
        self._temp = self._ambient(self.start_ts) + heat
        # Wear state: degradation starts at `_onset` and reaches failure `_life` seconds later.
        self._onset = self.start_ts + rng.exponential(cfg.onset_mean_s, n)
        self._life = self._draw_life(n)
        self._up = np.ones(n, dtype=bool)
        self._down_until = np.full(n, -np.inf)
        self._health = np.ones(n)
        self._k = 0  # steps taken; ts is start_ts + k * period, never an accumulated sum

    @property
    def now(self) -> float:
        """Timestamp of the most recent step (start_ts before the first one)."""
        return self.start_ts + max(self._k - 1, 0) * self.cfg.period_s

    @property
    def health(self) -> FloatArray:
        """Hidden health per asset in [0, 1] after the latest step (0 while down); read-only."""
        view = self._health.view()
        view.flags.writeable = False
        return view

    def force_failure(self, asset_index: int, within_s: float) -> None:
        """Make the asset degrade so that it fails about `within_s` simulated seconds from now.

        An asset already degrading keeps its current health and just decays faster; one whose
        natural failure comes sooner, or that is down already, is left alone.
        """
        if not 0 <= asset_index < self.cfg.n_assets:
            raise ConfigError(f"asset index {asset_index} out of range 0..{self.cfg.n_assets - 1}")
        if not (math.isfinite(within_s) and within_s > 0):
            raise ConfigError(f"within_s must be a positive number, got {within_s}")
        i = asset_index
        if not self._up[i]:
            return
        now = self.now
        if now + within_s >= self._onset[i] + self._life[i]:
            return
        frac = max(0.0, (now - self._onset[i]) / self._life[i])
        # Keep h continuous: the new curve passes through today's degradation fraction and
        # reaches 1 at now + within_s.
        life = within_s / (1.0 - frac)
        self._life[i] = life
        self._onset[i] = now + within_s - life

    def step(self) -> Step:
        """Advance one period and return every asset's readings and the events at that time."""
        cfg = self.cfg
        n = cfg.n_assets
        rng = self._rng
        ts = self.start_ts + self._k * cfg.period_s
        self._k += 1
        dt = cfg.period_s
        # Every step draws the same shapes in the same order, so a seed fixes the whole run.
        regime_u = rng.random(n)
        regime_target = self._load_level(rng.uniform(0.0, 1.0, n))
        noise = rng.standard_normal((n, len(CHANNELS) + 1))
        spike_u = rng.random(n)
        spike_size = rng.exponential(1.0, n)

        events: list[Event] = []
        self._repair(ts, events)

        change = regime_u < dt / cfg.regime_mean_s
        self._target = np.where(change, regime_target, self._target)
        tau = _POINT_RAMP_TAU_S if cfg.operating_points else _RAMP_TAU_S
        self._load += (self._target - self._load) * -math.expm1(-dt / tau)

        elapsed = ts - self._onset
        failing = self._up & (elapsed >= self._life)
        self._fail(ts, failing, events)
        frac = np.clip(elapsed / self._life, 0.0, 1.0)
        wear = frac**cfg.shape  # 1 - h
        self._health = np.where(self._up, 1.0 - wear, 0.0)

        values = self._readings(ts, wear, noise, spike_u, spike_size)
        values[~self._up] = np.nan
        return Step(ts=ts, values=values, up=self._up.copy(), events=events)

    def _readings(
        self,
        ts: float,
        wear: FloatArray,
        noise: npt.NDArray[np.float64],
        spike_u: FloatArray,
        spike_size: FloatArray,
    ) -> FloatArray:
        cfg = self.cfg
        load = self._load
        speed_frac = 0.55 + 0.45 * load  # affinity laws: flow ~ n, head ~ n^2
        current = self._rated_current * self._current_frac(load) * (1.0 + 0.10 * wear)
        pressure = self._rated_pressure * speed_frac**2 * (1.0 - 0.06 * wear)
        heat = self._heat_rise * (current / self._rated_current) ** 2 + 12.0 * wear
        target_temp = self._ambient(ts) + heat
        self._temp += (target_temp - self._temp) * -math.expm1(-cfg.period_s / _THERMAL_TAU_S)
        vib_mean = self._vib_base * speed_frac**2 * (1.0 + 2.0 * wear)
        # A worn bearing rattles: the process spread grows with wear, beyond the sensor noise.
        vib = vib_mean * (1.0 + 0.3 * wear * noise[:, -1])
        vib += np.where(spike_u < _SPIKE_PROB, 3.0 * self._vib_base * spike_size, 0.0)

        out = np.empty((cfg.n_assets, len(CHANNELS)))
        out[:, _TEMP] = self._temp
        out[:, _VIB] = vib
        out[:, _CURRENT] = current
        out[:, _PRESSURE] = pressure
        out[:, _SPEED] = _RATED_RPM * speed_frac
        out += noise[:, : len(CHANNELS)] * (_SENSOR_SIGMA * cfg.noise)
        out[:, _VIB] = np.abs(out[:, _VIB])  # an RMS is never negative
        return np.round(out, _DECIMALS)

    def _repair(self, ts: float, events: list[Event]) -> None:
        done = ~self._up & (ts >= self._down_until)
        if not done.any():
            return
        idx = np.flatnonzero(done)
        self._up[idx] = True
        self._onset[idx] = ts + self._rng.exponential(self.cfg.onset_mean_s, idx.size)
        self._life[idx] = self._draw_life(idx.size)
        # A pump that stood for hours restarts cold.
        self._load[idx] = self._target[idx]
        self._temp[idx] = self._ambient(ts)[idx]
        events.extend((ts, self._names[i], MAINTENANCE) for i in idx)

    def _fail(self, ts: float, failing: BoolArray, events: list[Event]) -> None:
        if not failing.any():
            return
        idx = np.flatnonzero(failing)
        self._up[idx] = False
        downtime = self._rng.uniform(self.cfg.downtime_min_s, self.cfg.downtime_max_s, idx.size)
        self._down_until[idx] = ts + downtime
        events.extend((ts, self._names[i], FAILURE) for i in idx)

    def _load_level(self, u: FloatArray) -> FloatArray:
        """The load level a uniform draw u in [0, 1) picks: any between 0.5 and 1, or one of the
        operating points (the draws are the same either way, so a seed fixes the rest of the run)."""
        k = self.cfg.operating_points
        if k == 0:
            return 0.5 + 0.5 * u
        if k == 1:
            return np.full_like(u, 0.75)
        return 0.5 + 0.5 * np.floor(u * k) / (k - 1)

    def _draw_life(self, size: int) -> FloatArray:
        lo, hi = math.log(self.cfg.life_min_s), math.log(self.cfg.life_max_s)
        return np.exp(self._rng.uniform(lo, hi, size))

    def _ambient(self, ts: float) -> FloatArray:
        # Daily cycle peaking mid-afternoon UTC; a slow confounder for temperature.
        phase = 2.0 * math.pi * ((ts % DAY) / DAY - 0.375)
        return 20.0 + self._ambient_offset + 5.0 * math.sin(phase)

    @staticmethod
    def _current_frac(load: FloatArray) -> FloatArray:
        return 0.35 + 0.65 * load
