"""The model-file contract: metadata that travels inside the TorchScript file, shared with training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError

from agent.errors import ModelError
from agent.names import valid_name

SCHEMA_VERSION = 1
METADATA_FILE = "vigil.json"
KNOWN_HEADS = ("forecast_mean", "forecast_logvar", "fail_prob", "rul")


@dataclass(frozen=True)
class Normalisation:
    """Per-channel affine normalisation fitted on training data: (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class SurpriseStats:
    """How forecast surprise becomes a probability.

    The per-window score is the mean squared z-score of newly observed cells under the
    previous forecast, smoothed by an EWMA; `quantiles` are that smoothed score's quantiles
    on healthy validation data at evenly spaced probabilities 0..1 (an empirical CDF).
    """

    ewma_alpha: float
    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class Combiner:
    """Logistic combination of the two signals: sigmoid(w_fail*logit(pf) + w_surprise*logit(ps) + bias)."""

    w_fail: float
    w_surprise: float
    bias: float


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
        n = self.normalisation
        return ((x - np.asarray(n.mean)) / np.asarray(n.std)).astype(np.float32)

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
    if s.window < 2 or s.horizon < 1 or s.fail_horizon < 1:
        out.append("window >= 2, horizon >= 1 and fail_horizon >= 1 required")
    n = len(s.channels)
    if len(s.normalisation.mean) != n or len(s.normalisation.std) != n:
        out.append("normalisation must have one mean and std per channel")
    if any(not sd > 0 for sd in s.normalisation.std):
        out.append("normalisation std must be > 0")
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
    q = s.surprise.quantiles
    if len(q) < 2 or any(b < a for a, b in zip(q, q[1:], strict=False)):
        out.append("surprise quantiles must be >= 2 non-decreasing values")
    if not 0 < s.surprise.ewma_alpha <= 1:
        out.append("surprise ewma_alpha must be in (0, 1]")
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
        "thresholds": {"warning": spec.thresholds.warning, "critical": spec.thresholds.critical},
        "created_at": spec.created_at,
    }
