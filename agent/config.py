"""Agent configuration: TOML, validated once at start-up into typed, frozen objects."""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError
from agent.names import BrokerURL, valid_name

_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HELP = 'seconds (a number) or a number with a unit s, m, h or d, e.g. "90s", "30m", "12h", "3d"'


def parse_duration(value: object) -> float:
    """Seconds from a duration: a number of seconds, or a string with a unit ("90s", "30m", "12h",
    "3d"). Raises ValueError with the accepted forms for anything else, negative or not finite."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: use {DURATION_HELP}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it must be finite and not negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A config duration in seconds, written as a number of seconds or a string with a unit."""

# Sparkplug hosts hold a tag's last value until a new one, a death or a bad quality (Sparkplug 3.0
# host behaviour); the limit only catches a value nobody refreshed for a week.
SPARKPLUG_HOLD_S = 7 * 86400.0
DEFAULT_GOOD_QUALITY: tuple[str | int, ...] = ("good", 192)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True


class BrokerConfig(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "vigil"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 3600
    reconnect_min_s: Annotated[float, Field(gt=0)] = 0.2
    reconnect_max_s: Annotated[float, Field(gt=0)] = 5.0
    tls: TLSConfig = TLSConfig()

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            BrokerURL.parse(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not valid_name(v):
            raise ValueError("must be 1-128 printable characters without + # / or NUL")
        return v

    @property
    def parsed_url(self) -> BrokerURL:
        return BrokerURL.parse(self.url)

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"broker.password_file: cannot read {self.password_file}: "
                                  f"{exc.strerror}") from exc
        return self.password


class ShadowConfig(_Strict):
    """`[model.shadow]`: a candidate model scored beside the live one and never published.

    It must read the same channels, sample period and window as the live model; its levels
    are decided and accounted for (lead time, misses, false alarms) but never sent.
    """

    path: Path


class ModelConfig(_Strict):
    path: Path
    # "onnx": ONNX Runtime on a .onnx export of the same model (extra `onnx`); torch is never
    # imported, so the agent starts faster and needs ~150 MiB less memory.
    runtime: Literal["torchscript", "onnx"] = "torchscript"
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    sha256: str | None = None
    watch_interval_s: Annotated[float, Field(ge=0)] = 2.0
    warning: Annotated[float, Field(gt=0, le=1)] | None = None
    critical: Annotated[float, Field(gt=0, le=1)] | None = None
    # A factor on the model's calibrated false-alarm rate: 2 alerts earlier and accepts about
    # twice the false alarms, 0.5 the reverse (agent.risk.sensitive); no refit needed.
    sensitivity: Annotated[float, Field(gt=0, le=1000)] = 1.0
    shadow: ShadowConfig | None = None


class SparkplugConfig(_Strict):
    """`[subscriptions.sparkplug]`: how a `codec = "sparkplug"` subscription treats edge nodes.

    Mirrors agent.sparkplug.host.HostOptions (see docs/sparkplug.md); `host_id` makes the
    agent a Primary Host Application publishing `spBv1.0/STATE/{host_id}`.
    """

    reorder_timeout_s: Annotated[float, Field(ge=0)] = 2.0
    rebirth_interval_s: Annotated[float, Field(ge=0)] = 10.0
    send_rebirth: bool = True
    asset: str = "{device}"
    max_pending: Annotated[int, Field(ge=1, le=255)] = 64
    host_id: str | None = None

    @field_validator("asset")
    @classmethod
    def _asset(cls, v: str) -> str:
        fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        if not fields or not fields <= {"group", "node", "device"}:
            raise ValueError("must name the asset from {group}, {node} and/or {device}")
        return v

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str | None) -> str | None:
        if v is not None and not valid_name(v):
            raise ValueError("must be 1-128 printable characters without + # / or NUL")
        return v


class SubscriptionConfig(_Strict):
    filter: str
    template: str = ""
    codec: Literal["json", "json-multi", "sparkplug"] = "json"
    qos: Literal[0, 1, 2] = 1
    ts_field: str = "ts"
    value_field: str = "value"
    values_field: str = "values"
    ts_format: Literal["auto", "epoch_s", "epoch_ms", "rfc3339", "arrival"] = "auto"
    channel: str | None = None
    channel_map: dict[str, str] = {}
    scale: dict[str, float] = {}
    offset: dict[str, float] = {}
    sparkplug: SparkplugConfig = SparkplugConfig()
    # Report by exception: a channel's last value stands in the following cells for this long
    # (0: off). None: the codec's default (Sparkplug SPARKPLUG_HOLD_S, JSON off).
    hold: Duration | None = None
    # JSON codecs: the field carrying the reading's quality; a value not in `good_quality` marks the
    # channel bad. Sparkplug reads is_null and the metric's Quality property instead.
    quality_field: str | None = None
    good_quality: Annotated[list[bool | int | float | str], Field(min_length=1)] = list(DEFAULT_GOOD_QUALITY)

    @field_validator("quality_field")
    @classmethod
    def _quality_field(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("must name a field of the payload, e.g. \"q\"")
        return v

    @property
    def hold_s(self) -> float:
        """How long a channel's last value holds, in seconds (0: not at all)."""
        if self.hold is not None:
            return self.hold
        return SPARKPLUG_HOLD_S if self.codec == "sparkplug" else 0.0

    @property
    def topic_filter(self) -> str:
        """The filter without a `$share/{group}/` prefix: what topics actually look like."""
        if self.filter.startswith("$share/"):
            return self.filter.split("/", 2)[2] if self.filter.count("/") >= 2 else ""
        return self.filter

    @model_validator(mode="after")
    def _template_fits_filter(self) -> SubscriptionConfig:
        if self.codec == "sparkplug":
            if self.quality_field is not None:
                raise ValueError("quality_field is for the json codecs: Sparkplug marks quality with "
                                 "is_null and the metric's Quality property")
            return self._sparkplug_filter()
        if "sparkplug" in self.model_fields_set:
            raise ValueError("a [subscriptions.sparkplug] table needs codec = \"sparkplug\"")
        if not self.template:
            raise ValueError(f"codec {self.codec!r} needs a template naming {{asset}}")
        if self.filter.startswith("$share/") and (self.filter.count("/") < 2
                                                   or not self.filter.split("/")[1]):
            raise ValueError("a shared subscription is $share/{group}/{filter}")
        f_levels = self.topic_filter.split("/")
        t_levels = self.template.split("/")
        if "#" in f_levels[:-1] or any("#" in f and f != "#" for f in f_levels):
            raise ValueError("'#' may only stand alone as the filter's last level")
        if f_levels[-1] == "#":
            # A '#' filter takes any depth; the template names the depth it accepts, and
            # topics of another depth are rejected with reason `topic`.
            if len(t_levels) < len(f_levels) - 1:
                raise ValueError(f"template {self.template!r} is shorter than filter {self.filter!r}")
            f_levels = f_levels[:-1] + ["#"] * (len(t_levels) - len(f_levels) + 1)
        if len(f_levels) != len(t_levels):
            raise ValueError(f"template {self.template!r} has {len(t_levels)} levels, "
                             f"filter {self.filter!r} has {len(f_levels)}")
        names = []
        for f, t in zip(f_levels, t_levels, strict=True):
            m = _PLACEHOLDER.match(t)
            if m:
                names.append(m.group(1))
            elif f == "+":
                raise ValueError(f"filter level '+' needs a {{name}} in the template, got {t!r}")
            elif f not in ("#", t):
                raise ValueError(f"template level {t!r} does not match filter level {f!r}")
        if len(set(names)) != len(names):
            raise ValueError("template names a part twice")
        if "asset" not in names:
            raise ValueError("template must name {asset}")
        if self.codec == "json" and "channel" not in names and self.channel is None:
            raise ValueError("json codec needs {channel} in the template or a fixed `channel`")
        return self

    def _sparkplug_filter(self) -> SubscriptionConfig:
        # Sparkplug topics are fixed (spBv1.0/{group}/{type}/{node}[/{device}]): no template.
        # One host must see all of an edge node's messages (seq and aliases are per node), so
        # a shared subscription, which splits them between agents, is refused.
        if self.template:
            raise ValueError("codec sparkplug takes no template: its topic namespace is fixed")
        if self.filter.startswith("$share/"):
            raise ValueError("codec sparkplug cannot use a shared subscription: an edge node's "
                             "messages must all reach one host (use [assets] partition)")
        levels = self.filter.split("/")
        if levels[0] != "spBv1.0" or len(levels) < 2 or len(levels) > 5:
            raise ValueError("codec sparkplug needs a filter under spBv1.0/, e.g. spBv1.0/plant/#")
        if "#" in levels[:-1] or any("#" in f and f != "#" for f in levels) or any(
                "+" in f and f != "+" for f in levels):
            raise ValueError("'+' and '#' must stand alone as a level, '#' only as the last")
        return self


class OutputsConfig(_Strict):
    prefix: str = "vigil"
    risk_qos: Literal[0, 1] = 0
    risk_retain: bool = True

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or not all(valid_name(p) for p in v.split("/")):
            raise ValueError("must be topic levels without + # or NUL")
        return v


class HTTPConfig(_Strict):
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class WindowsConfig(_Strict):
    aggregation: Literal["last", "mean"] = "last"
    max_gap: Annotated[int, Field(ge=0)] = 5
    allowed_lateness: Annotated[int, Field(ge=0)] = 10
    stride: Annotated[int, Field(ge=1)] = 1
    max_future_skew_s: Annotated[float, Field(ge=0)] = 300.0
    ts_floor: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_assets: Annotated[int, Field(ge=1)] = 10_000
    max_payload_bytes: Annotated[int, Field(ge=16)] = 65_536

    def out_of_bounds(self, ts: float, wall: float) -> Literal["future", "too_old"] | None:
        """Why event time `ts`, arriving at wall time `wall`, is not trusted (None: it is)."""
        if ts > wall + self.max_future_skew_s:
            return "future"
        if ts < self.ts_floor.timestamp():
            return "too_old"
        return None


class AssetsConfig(_Strict):
    """Which assets this agent serves.

    `allow`: glob patterns (fnmatch); empty means every asset. `partition = "i/n"`: this agent
    is member i of n and serves the assets whose stable hash (CRC-32 of the name) mod n is i,
    so n agents with 0/n .. n-1/n on one broker serve every asset exactly once.
    """

    allow: list[str] = []
    partition: str | None = None

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str | None) -> str | None:
        if v is None:
            return v
        i, _, n = v.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ValueError('must be "i/n" with 0 <= i < n, e.g. "0/2"')
        return v

    @property
    def member(self) -> tuple[int, int] | None:
        if self.partition is None:
            return None
        i, _, n = self.partition.partition("/")
        return int(i), int(n)


class InferenceConfig(_Strict):
    max_batch: Annotated[int, Field(ge=1, le=65_536)] = 256
    max_wait_ms: Annotated[float, Field(ge=0)] = 20.0
    queue_size: Annotated[int, Field(ge=1)] = 10_000


class StateConfig(_Strict):
    dir: Path = Field(default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", "./state")))
    checkpoint_interval_s: Annotated[float, Field(gt=0)] = 10.0
    outbox_max: Annotated[int, Field(ge=1)] = 100_000
    outbox_resend_per_s: Annotated[float, Field(gt=0)] = 50.0


class AlarmsConfig(_Strict):
    """`[alarms]`: alarm management in the sense of ISA-18.2 / IEC 62682.

    Counted in event time, like dwell and cooldown. A flood is more than `flood_threshold`
    alarms (raises to warning or critical) within `flood_window_s`; while it lasts, warnings
    collapse into one summary and criticals still go out. An asset whose level changes more
    than `chatter_toggles` times within `chatter_window_s` is chattering.
    """

    flood_threshold: Annotated[int, Field(ge=1)] = 10
    flood_window_s: Annotated[float, Field(gt=0)] = 600.0
    chatter_toggles: Annotated[int, Field(ge=1)] = 3
    chatter_window_s: Annotated[float, Field(gt=0)] = 600.0
    # How long after an alert's horizon has passed a late CMMS report may still confirm it,
    # before the alert counts as a false alarm.
    report_grace_s: Annotated[float, Field(ge=0)] = 0.0
    max_shelve_s: Annotated[float, Field(gt=0)] = 7 * 86400.0


class DriftConfig(_Strict):
    """`[drift]`: per-channel population stability index of recent inputs against training."""

    # A day: plant data has daily cycles, which a shorter window would report as drift.
    window_s: Annotated[float, Field(gt=0)] = 86400.0
    psi_threshold: Annotated[float, Field(gt=0)] = 0.25
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    min_samples: Annotated[int, Field(ge=1)] = 200


class RecordConfig(_Strict):
    """`[record]`: every accepted reading into rotating Parquet files, the history of the next refit.

    Long format (`ts, asset, channel, value`), `dir/YYYY-MM-DD/part-*.parquet`; a file is
    written whole under a hidden temporary name and renamed, so readers never see half of
    one. Past `max_bytes` the oldest files are deleted. See agent.recorder.
    """

    enabled: bool = False
    dir: Path | None = None  # default: `recording` in the state directory
    max_bytes: Annotated[int, Field(ge=1)] = 5 << 30
    file_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 500_000
    rotate_s: Annotated[float, Field(gt=0)] = 600.0


class LearnConfig(_Strict):
    """`[learn]`: the gateway learns its own machines (see agent.learning and agent.trial).

    Without a model file the agent records and fits its first model once `min_history` of event
    time is recorded; then it refits every `refit_every` (0: only when told), judges each
    candidate against the live model before it becomes the shadow, and promotes a shadow that
    did at least as well over `trial` of event time; a promoted model that then does worse than
    the one it replaced is rolled back after a second `trial`.
    """

    min_history: Duration = 3 * 86400.0
    refit_every: Duration = 0.0
    trial: Annotated[Duration, Field(gt=0)] = 7 * 86400.0
    auto_promote: bool = True
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    nice: Annotated[int, Field(ge=0, le=19)] = 19
    # Extra `vigil-train fit` options for the fits the agent runs, e.g. {epochs = 10}.
    fit_options: dict[str, str | int | float | bool] = {}


class MetricsConfig(_Strict):
    """`[metrics]`: which assets get their own `vigil_asset_risk{asset}` / `vigil_asset_level{asset}`.

    `top` (default): the `per_asset_limit` assets with the highest level, then the highest
    risk (every asset while there are no more); `all`: every asset held (up to `[windows]
    max_assets`); `none`: no per-asset series. The fleet-level series (assets by level, a
    histogram of every asset's risk, how many assets were left out) are always exported.
    """

    per_asset: Literal["top", "all", "none"] = "top"
    # 500 assets are 1,000 series: with the agent's ~240 others a scrape at 10,000 assets is
    # ~1,250 series and ~70 KB (bench/asset_flood.py), under 190 KB with 128-character names.
    per_asset_limit: Annotated[int, Field(ge=1, le=100_000)] = 500


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class AgentConfig(_Strict):
    agent_id: str | None = None
    broker: BrokerConfig = BrokerConfig()
    model: ModelConfig
    subscriptions: Annotated[list[SubscriptionConfig], Field(min_length=1)]
    outputs: OutputsConfig = OutputsConfig()
    http: HTTPConfig = HTTPConfig()
    windows: WindowsConfig = WindowsConfig()
    assets: AssetsConfig = AssetsConfig()
    inference: InferenceConfig = InferenceConfig()
    state: StateConfig = Field(default_factory=StateConfig)
    alarms: AlarmsConfig = AlarmsConfig()
    drift: DriftConfig = DriftConfig()
    record: RecordConfig = RecordConfig()
    learn: LearnConfig = LearnConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    @property
    def resolved_agent_id(self) -> str:
        return self.agent_id or self.broker.client_id

    @property
    def models_dir(self) -> Path:
        """Where the learning loop keeps candidates, the shadow, reports and its decisions."""
        return self.state.dir / "models"

    @property
    def shadow_path(self) -> Path:
        """The shadow model file: `[model.shadow] path`, else the learning loop's own."""
        return self.model.shadow.path if self.model.shadow is not None else self.models_dir / "shadow.pt"

    @property
    def record_dir(self) -> Path:
        """Where `[record]` writes: its `dir`, by default `recording` in the state directory."""
        return self.record.dir if self.record.dir is not None else self.state.dir / "recording"

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, v: str | None) -> str | None:
        if v is not None and not valid_name(v):
            raise ValueError("must be 1-128 printable characters without + # / or NUL")
        return v


_ENV = {"VIGIL_BROKER_URL": "url", "VIGIL_BROKER_USERNAME": "username",
        "VIGIL_BROKER_PASSWORD": "password"}


def _format_error(exc: ValidationError, path: Path) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{path}: {where}: {msg}{more}"


def load_config(path: Path, env: dict[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment, and validate a config file.

    Relative paths in the file (model, state, TLS files) are taken from the file's folder.
    Raises ConfigError with a one-line reason naming the key.
    """
    env = dict(os.environ) if env is None else env
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    broker = raw.setdefault("broker", {})
    if not isinstance(broker, dict):
        raise ConfigError(f"{path}: broker: must be a table")
    for var, key in _ENV.items():
        if env.get(var):
            broker[key] = env[var]
    base = path.parent
    if isinstance(broker.get("password_file"), str):
        broker["password_file"] = str(base / broker["password_file"])
    tls = broker.get("tls")
    if isinstance(tls, dict):
        for key in ("ca_file", "cert_file", "key_file"):
            if isinstance(tls.get(key), str):
                tls[key] = str(base / tls[key])
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        model["path"] = str(base / model["path"])
    shadow = model.get("shadow") if isinstance(model, dict) else None
    if isinstance(shadow, dict) and isinstance(shadow.get("path"), str):
        shadow["path"] = str(base / shadow["path"])
    for table in ("state", "record"):
        part = raw.get(table)
        if isinstance(part, dict) and isinstance(part.get("dir"), str):
            part["dir"] = str(base / part["dir"])
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, path)) from exc
