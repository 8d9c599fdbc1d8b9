"""The model-file contract: metadata that travels inside the TorchScript file, shared with training."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError

from agent.errors import ModelError
from agent.names import valid_name

SCHEMA_VERSION = 1
METADATA_FILE = "vigil.json"
KNOWN_HEADS = ("forecast_mean", "forecast_logvar", "fail_prob", "rul", "anomaly_nll")


# |mean| / std beyond which a channel's readings are kept in float64 (see float32_exact).
FLOAT32_MAX_OFFSET = 1_000.0


@dataclass(frozen=True)
class Normalisation:
    """Per-channel affine normalisation fitted on training data: (x - mean) / std.

    With operating regimes (several operating conditions, as in C-MAPSS FD002/FD004), each
    cell is first assigned to the nearest regime centre, measured on `regime_channels` in
    units of `regime_scale`; the other channels are then normalised with that regime's
    `regime_mean` and `regime_std`, and each regime channel is replaced by its centre,
    standardised with the global `mean` and `std`, so the model knows the operating
    condition without its measurement noise. Without regimes (the default, and every file
    written before regimes existed) it is the global affine map alone.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    regime_channels: tuple[int, ...] = ()
    regime_scale: tuple[float, ...] = ()
    regime_centres: tuple[tuple[float, ...], ...] = ()   # [K][len(regime_channels)], raw units
    regime_mean: tuple[tuple[float, ...], ...] = ()      # [K][C]
    regime_std: tuple[tuple[float, ...], ...] = ()       # [K][C]
    # Normalised values are clipped to +-clip (0: not clipped), so a reading hundreds of spreads
    # away (a counter reset, a unit change, a fault) cannot throw the model far off its inputs.
    clip: float = 0.0

    @property
    def n_regimes(self) -> int:
        return len(self.regime_centres)

    @property
    def float32_exact(self) -> bool:
        """Whether raw readings survive float32 storage: float32 keeps ~7 digits, so a channel
        whose mean is more than ~1,000 standard deviations from zero (a totalising counter near
        1e8 that moves by units) would lose more than 1e-4 of a standard deviation."""
        pairs = list(zip(self.mean, self.std, strict=True))
        for means, stds in zip(self.regime_mean, self.regime_std, strict=True):
            pairs += zip(means, stds, strict=True)
        return all(abs(m) <= FLOAT32_MAX_OFFSET * s for m, s in pairs)

    def regime_of(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int64]:
        """The regime index of each cell of `x` [..., C] (zeros without regimes)."""
        if not self.regime_centres:
            return np.zeros(x.shape[:-1], dtype=np.int64)
        r = x[..., list(self.regime_channels)] / np.asarray(self.regime_scale)
        centres = np.asarray(self.regime_centres) / np.asarray(self.regime_scale)
        d = ((r[..., None, :] - centres) ** 2).sum(axis=-1)
        # NaN cells (not whole) get regime 0; they are never scored.
        k: npt.NDArray[np.int64] = np.argmin(np.nan_to_num(d, nan=0.0), axis=-1).astype(np.int64)
        return k

    def apply(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Raw cells [..., C] into the model's input space; each cell on its own."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        if not self.regime_centres:
            out = (x - mean) / std
        else:
            k = self.regime_of(x)
            out = (x - np.asarray(self.regime_mean)[k]) / np.asarray(self.regime_std)[k]
            rc = list(self.regime_channels)
            codes = (np.asarray(self.regime_centres) - mean[rc]) / std[rc]   # [K, R]
            out[..., rc] = codes[k]
        if self.clip > 0:
            np.clip(out, -self.clip, self.clip, out=out)
        z: npt.NDArray[np.float32] = out.astype(np.float32)
        return z


@dataclass(frozen=True)
class Tail:
    """The upper tail of a healthy score distribution, a generalised Pareto distribution (GPD)
    beyond its threshold `u`: P(S > s) = share * (1 + xi * (s - u) / sigma) ** (-1 / xi) for s > u.

    Extreme-value theory (peaks over threshold, as in SPOT, Siffer et al., KDD 2017): the tail
    beyond what validation showed is extrapolated, so a rare-enough score gets a probability
    below 1 / (validation windows) instead of saturating at the largest score seen.
    """

    share: float   # P(S > u): the share of healthy scores beyond the threshold
    u: float
    sigma: float
    xi: float

    def survival(self, s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """P(S > s) for s >= u (s below u is treated as u)."""
        y = np.maximum(np.asarray(s, dtype=np.float64) - self.u, 0.0) / self.sigma
        if abs(self.xi) < 1e-9:
            return np.asarray(self.share * np.exp(-y))
        base = np.maximum(1.0 + self.xi * y, 0.0)
        with np.errstate(divide="ignore"):
            return np.asarray(self.share * np.power(base, -1.0 / self.xi))

    def quantile(self, p: float) -> float:
        """The score s with P(S > s) = p, for 0 < p <= share."""
        r = min(max(p, 1e-300), self.share) / self.share
        if abs(self.xi) < 1e-9:
            return float(self.u - self.sigma * np.log(r))
        return float(self.u + self.sigma / self.xi * (r ** -self.xi - 1.0))


@dataclass(frozen=True)
class SurpriseStats:
    """How forecast surprise becomes a probability.

    The per-window score is the mean squared z-score of newly observed cells under the
    previous forecast, smoothed by an EWMA; `quantiles` are that smoothed score's quantiles
    on healthy validation data at evenly spaced probabilities 0..1 (an empirical CDF), and
    `tail` (when set) extends it beyond its top quantiles by extreme-value theory.

    The z-score divides each channel's forecast error by `residual_scale` (its spread on healthy
    validation data, in normalised units); without it (older files) by the forecast's own
    standard deviation, `exp(forecast_logvar / 2)`. A forecast's own deviation widens right after
    an upset, which is when an anomaly should count most; a fixed healthy spread does not.
    """

    ewma_alpha: float
    quantiles: tuple[float, ...]
    residual_scale: tuple[float, ...] = ()
    tail: Tail | None = None
    # Each channel's z-score is capped at this many spreads before it is squared (0: no cap).
    z_max: float = 0.0


@dataclass(frozen=True)
class Distribution:
    """A healthy score distribution: quantiles at evenly spaced probabilities 0..1, and its tail."""

    quantiles: tuple[float, ...]
    tail: Tail | None = None


@dataclass(frozen=True)
class LevelStats:
    """How far an asset's state lies from its healthy operating state, jointly over channels.

    The newest normalised cell x, less the healthy `center`, scored as the Mahalanobis distance
    d' P d / C with P the inverse of the healthy covariance shrunk towards its diagonal (so
    channels that move together count once, and a combination never seen in health counts even
    when each channel alone looks normal); each channel's standardised distance is capped at
    `z_max`. Smoothed by an EWMA per channel contribution (the drivers), turned into a
    probability by its healthy distribution. It sees a state that stays abnormal, which
    forecast surprise, a measure of change, stops seeing once the forecast has caught up.
    """

    ewma_alpha: float
    center: tuple[float, ...]
    precision: tuple[tuple[float, ...], ...]
    quantiles: tuple[float, ...]
    tail: Tail | None = None
    z_max: float = 0.0


@dataclass(frozen=True)
class Baseline:
    """One asset's own normal: its inputs enter the model as (x - center) / scale, per channel."""

    center: tuple[float, ...]
    scale: tuple[float, ...]


@dataclass(frozen=True)
class BaselinePolicy:
    """Per-asset baselines: each asset is normalised against its own normal before the model's
    normalisation, so machines whose units or operating levels differ share one model.

    Assets with a profile in the file use its baseline; any other asset learns its own from
    its first `cells` whole cells (robust centre and spread, `agent.baseline`), and is scored
    from then on. Regime channels are not baselined (they name the operating condition).
    """

    cells: int
    channels: tuple[int, ...]        # indices of the baselined channels
    floor: tuple[float, ...]         # per channel, the smallest scale a baseline may have (raw units)


@dataclass(frozen=True)
class AssetProfile:
    """What the model knows of one asset of its training history: its baseline (with per-asset
    baselines) and its own surprise statistics (when its history had validation time of its own)."""

    baseline: Baseline | None = None
    surprise: SurpriseStats | None = None
    level: Distribution | None = None


@dataclass(frozen=True)
class AnomalyStats:
    """How the VAE's anomaly score (`anomaly_nll`, negative reconstruction log-likelihood per
    cell) becomes a probability: its quantiles on healthy validation windows at evenly spaced
    probabilities 0..1 (an empirical CDF), as for surprise. Only models with the head carry it."""

    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class Combiner:
    """Logistic combination of the signals:
    sigmoid(w_fail*logit(pf) + w_surprise*logit(ps) + w_anomaly*logit(pa) + w_level*logit(pl) + bias);
    or, with rule "max" (no failure labels to weigh them by), the highest probability of the
    signals with a non-zero weight: any one signal far in its tail raises the risk.

    `w_anomaly`, `w_level` and `rule` default so that files written before them load unchanged."""

    w_fail: float
    w_surprise: float
    bias: float
    w_anomaly: float = 0.0
    w_level: float = 0.0
    rule: str = "logistic"


@dataclass(frozen=True)
class Thresholds:
    """Level thresholds on risk, calibrated in training to a false-alarm budget.

    `dwell` and `cooldown` count windows and grid cells (event time), never wall time.
    """

    warning: float
    critical: float
    hysteresis: float = 0.05
    dwell: int = 2
    cooldown: int = 30
    # The upper tail of logit(risk) on healthy validation windows: how `[model] sensitivity`
    # moves the thresholds without a refit (`agent.risk.sensitive`). None in older files.
    tail: Tail | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the agent needs to know about a model file, besides its weights."""

    channels: tuple[str, ...]
    period_s: float
    window: int
    horizon: int
    fail_horizon: int
    normalisation: Normalisation
    heads: tuple[str, ...]
    thresholds: Thresholds
    surprise: SurpriseStats
    combiner: Combiner
    fingerprint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    # The `rul` head's plateau in grid cells: it predicts min(cells to failure, rul_cap).
    rul_cap: float = 0.0
    # The `anomaly_nll` head's healthy distribution (None: no such head; older files).
    anomaly: AnomalyStats | None = None
    # Per channel, quantiles of the raw training inputs at evenly spaced probabilities 0..1: the
    # reference the agent's drift measure (PSI) compares recent inputs with. Older files: empty.
    input_quantiles: tuple[tuple[float, ...], ...] = ()
    # The state signal (None: older files, or none fitted).
    level: LevelStats | None = None
    # Per-asset baselines (None: one normalisation for every asset) and per-asset profiles.
    baseline: BaselinePolicy | None = None
    profiles: dict[str, AssetProfile] = field(default_factory=dict)
    # Report by exception: how long (seconds) a channel's last value filled the cells after it in
    # training (`vigil-train fit --hold`; 0: max_gap only). None: a file from before it was recorded.
    hold_s: float | None = None
    created_at: str = ""
    version: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ModelError("model metadata invalid: " + "; ".join(problems))

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def normalise(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Raw windows [..., C] into the model's input space. Training and the agent both call
        this, so what the model saw in training is what it sees in service."""
        return self.normalisation.apply(x)

    @property
    def horizon_s(self) -> float:
        """The failure horizon in seconds: what `fail_prob` is the probability of failing within."""
        return self.fail_horizon * self.period_s

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in the model file."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse and validate metadata; raise ModelError naming the problem."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"model metadata is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelError("model metadata is not a JSON object")
        got = raw.get("schema_version")
        if got != SCHEMA_VERSION:
            raise ModelError(f"model metadata schema_version {got!r}, this agent reads {SCHEMA_VERSION}")
        try:
            return _ADAPTER.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ModelError(f"model metadata invalid: {where}: {first['msg']}") from exc

    def with_version(self, weights: bytes) -> ModelSpec:
        """This spec with `version` set to a content hash of the weights and the metadata.

        `created_at` is left out, so the same training run twice gets the same version.
        """
        h = hashlib.sha256(weights)
        h.update(replace(self, version="", created_at="").to_json().encode())
        return replace(self, version=h.hexdigest()[:12])


def _problems(s: ModelSpec) -> list[str]:
    out: list[str] = []
    if not s.channels or not all(valid_name(c) for c in s.channels):
        out.append("channels must be a non-empty list of valid names")
    if len(set(s.channels)) != len(s.channels):
        out.append("channels must be unique")
    if not s.period_s > 0:
        out.append("period_s must be > 0")
    if s.hold_s is not None and not 0 <= s.hold_s < math.inf:
        out.append("hold_s must be a finite number of seconds >= 0")
    if s.window < 2 or s.horizon < 1 or s.fail_horizon < 1:
        out.append("window >= 2, horizon >= 1 and fail_horizon >= 1 required")
    n = len(s.channels)
    if len(s.normalisation.mean) != n or len(s.normalisation.std) != n:
        out.append("normalisation must have one mean and std per channel")
    if any(not sd > 0 for sd in s.normalisation.std):
        out.append("normalisation std must be > 0")
    out.extend(_regime_problems(s.normalisation, n))
    if ("rul" in s.heads) != (s.rul_cap > 0):
        out.append("a model with a rul head needs rul_cap > 0, and only such a model")
    unknown = set(s.heads) - set(KNOWN_HEADS)
    if unknown:
        out.append(f"unknown heads {sorted(unknown)}")
    if "fail_prob" not in s.heads and not {"forecast_mean", "forecast_logvar"} <= set(s.heads):
        out.append("a model needs fail_prob or both forecast heads")
    t = s.thresholds
    if not 0 < t.warning <= t.critical <= 1:
        out.append("thresholds need 0 < warning <= critical <= 1")
    if t.dwell < 1 or t.cooldown < 0 or not 0 <= t.hysteresis < t.warning:
        out.append("thresholds need dwell >= 1, cooldown >= 0, 0 <= hysteresis < warning")
    if ("anomaly_nll" in s.heads) != (s.anomaly is not None):
        out.append("a model with an anomaly_nll head needs anomaly statistics, and only such a model")
    elif s.anomaly is not None and (len(s.anomaly.quantiles) < 2 or any(
            b < a for a, b in zip(s.anomaly.quantiles, s.anomaly.quantiles[1:], strict=False))):
        out.append("anomaly quantiles must be >= 2 non-decreasing values")
    iq = s.input_quantiles
    if iq and (len(iq) != n or any(len(row) < 3 or not all(map(np.isfinite, row))
                                    or any(b < a for a, b in itertools.pairwise(row)) for row in iq)):
        out.append("input_quantiles need, per channel, >= 3 finite non-decreasing values")
    out.extend(_surprise_problems(s.surprise, n, "surprise"))
    if not s.normalisation.clip >= 0:
        out.append("normalisation clip must be >= 0")
    if t.tail is not None:
        out.extend(_tail_problems(t.tail, "thresholds tail"))
    if s.combiner.rule not in ("logistic", "max"):
        out.append("combiner rule must be logistic or max")
    if s.level is not None:
        out.extend(_level_problems(s.level, n))
    out.extend(_baseline_problems(s, n))
    return out


def _surprise_problems(st: SurpriseStats, n_channels: int, where: str) -> list[str]:
    out: list[str] = []
    q = st.quantiles
    if len(q) < 2 or any(b < a for a, b in itertools.pairwise(q)):
        out.append(f"{where} quantiles must be >= 2 non-decreasing values")
    if not 0 < st.ewma_alpha <= 1:
        out.append(f"{where} ewma_alpha must be in (0, 1]")
    scale = st.residual_scale
    if scale and (len(scale) != n_channels or any(not v > 0 for v in scale)):
        out.append(f"{where} residual_scale needs one value > 0 per channel")
    if st.tail is not None:
        out.extend(_tail_problems(st.tail, f"{where} tail"))
    return out


def _level_problems(lv: LevelStats, n_channels: int) -> list[str]:
    out = _distribution_problems(Distribution(lv.quantiles, lv.tail), "level")
    if len(lv.center) != n_channels or len(lv.precision) != n_channels or any(
            len(row) != n_channels for row in lv.precision) or not 0 < lv.ewma_alpha <= 1:
        out.append("level needs a centre and a precision row per channel and ewma_alpha in (0, 1]")
    elif not np.isfinite(np.asarray(lv.precision)).all():
        out.append("level precision must be finite")
    return out


def _distribution_problems(d: Distribution, where: str) -> list[str]:
    out = []
    q = d.quantiles
    if len(q) < 2 or any(b < a for a, b in itertools.pairwise(q)):
        out.append(f"{where} quantiles must be >= 2 non-decreasing values")
    if d.tail is not None:
        out.extend(_tail_problems(d.tail, f"{where} tail"))
    return out


def _tail_problems(t: Tail, where: str) -> list[str]:
    if 0 < t.share < 1 and t.sigma > 0 and np.isfinite(t.u) and -1 < t.xi < 1:
        return []
    return [f"{where} needs 0 < share < 1, sigma > 0, a finite u and -1 < xi < 1"]


def _baseline_problems(s: ModelSpec, n_channels: int) -> list[str]:
    out: list[str] = []
    b = s.baseline
    if b is not None and (b.cells < 2 or len(b.floor) != n_channels or any(not v > 0 for v in b.floor)
                          or len(set(b.channels)) != len(b.channels)
                          or not all(0 <= c < n_channels for c in b.channels)
                          or set(b.channels) & set(s.normalisation.regime_channels)):
        out.append("baseline needs cells >= 2, one floor > 0 per channel and distinct channel indices "
                   "that are not regime channels")
    for asset, p in s.profiles.items():
        if p.baseline is not None and (b is None or len(p.baseline.center) != n_channels
                                       or len(p.baseline.scale) != n_channels
                                       or any(not v > 0 for v in p.baseline.scale)):
            out.append(f"profile {asset!r}: a baseline needs the model's baseline policy and one centre "
                       "and one scale > 0 per channel")
        if p.surprise is not None:
            out.extend(_surprise_problems(p.surprise, n_channels, f"profile {asset!r} surprise"))
        if p.level is not None:
            out.extend(_distribution_problems(p.level, f"profile {asset!r} level"))
    return out


def _regime_problems(n: Normalisation, n_channels: int) -> list[str]:
    if not (n.regime_channels or n.regime_centres or n.regime_mean or n.regime_std or n.regime_scale):
        return []
    k, r = len(n.regime_centres), len(n.regime_channels)
    out: list[str] = []
    if k < 1 or r < 1 or len(set(n.regime_channels)) != r or not all(
            0 <= c < n_channels for c in n.regime_channels):
        out.append("normalisation regimes need >= 1 centre and distinct regime channel indices")
    if len(n.regime_scale) != r or any(not v > 0 for v in n.regime_scale):
        out.append("normalisation regime_scale must have one value > 0 per regime channel")
    if any(len(c) != r for c in n.regime_centres):
        out.append("each regime centre needs one value per regime channel")
    if len(n.regime_mean) != k or len(n.regime_std) != k or any(
            len(m) != n_channels or len(sd) != n_channels for m, sd in zip(n.regime_mean, n.regime_std,
                                                                          strict=False)):
        out.append("normalisation needs one mean and std per regime and channel")
    elif any(not v > 0 for sd in n.regime_std for v in sd):
        out.append("normalisation regime std must be > 0")
    return out


_ADAPTER: TypeAdapter[ModelSpec] = TypeAdapter(ModelSpec)


def spec_summary(spec: ModelSpec) -> dict[str, Any]:
    """A short human-facing summary (for check-config and inspect)."""
    return {
        "version": spec.version,
        "channels": list(spec.channels),
        "period_s": spec.period_s,
        "window": spec.window,
        "horizon": spec.horizon,
        "horizon_s": spec.horizon_s,
        "heads": list(spec.heads),
        "regimes": max(spec.normalisation.n_regimes, 1),
        **({"rul_cap": spec.rul_cap} if spec.rul_cap else {}),
        **({"hold_s": spec.hold_s} if spec.hold_s is not None else {}),
        "signals": signals(spec),
        "baselines": ("per asset: learnt from an asset's first "
                      f"{spec.baseline.cells} cells unless the model knows it" if spec.baseline else "fleet"),
        "assets_profiled": len(spec.profiles),
        "thresholds": {"warning": spec.thresholds.warning, "critical": spec.thresholds.critical},
        "created_at": spec.created_at,
    }


def signals(spec: ModelSpec) -> list[str]:
    """The signals the model's risk is made of, as the risk message's `signals` names them."""
    c = spec.combiner
    named = (("fail_prob", c.w_fail), ("surprise", c.w_surprise), ("anomaly", c.w_anomaly),
             ("level", c.w_level))
    return [name for name, w in named if w > 0]
