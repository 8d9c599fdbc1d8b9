"""`vigil-train refit --state DIR`: a candidate model from the agent's recording, judged before it serves.

The state directory is the agent's (`[state] dir`):

    DIR/recording/            the agent's recording (Parquet, long format)
    DIR/events.csv            the CMMS events the agent appended (training events format)
    DIR/models/               what refits manage:
        fit.json              the fit options of the first model (refits train with them)
        candidate-<stamp>.pt  each judged candidate (and its .summary.json)
        shadow.pt             the last accepted candidate, installed atomically
        decisions.jsonl       one JSON line per decision
        reports/<stamp>/      report.md and PNGs of each decision
        .refit.lock           held while a refit runs (a second one exits busy)

A refit holds back the most recent part of the recording, trains a candidate on the rest (with
the events before it) and judges both models on the held-out part (`training.judge`). Work in
progress lives in a hidden folder of models/ and is renamed into place only once whole, so a
refit killed at any point leaves nothing a later run (or the agent) would take for a result;
the next run removes what it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import resource
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from agent.alerts import rfc3339_ms
from agent.errors import DataError, VigilError
from agent.files import append_line, fsync_path, install_file, write_atomic

EXIT_ACCEPTED = 0
EXIT_REFUSED = 3
EXIT_FAILED = 4
EXIT_BUSY = 5
DEFAULT_HOLDOUT = 0.2
DEFAULT_KEEP = 10

# FitOptions that say where data and files are and how one run behaves: never kept in fit.json.
RUN_FIELDS = frozenset({
    "history", "out", "events", "fmt", "progress", "checkpoint", "resume", "stop_after", "report",
    "work_dir", "threads", "stream", "stream_budget", "stream_cells", "shards", "shard_windows",
    "member_processes", "val_assets"})
# What a shadow model must share with the live one (agent.shadow.load_shadow): taken from the live file.
CONTRACT = ("channels", "period_s", "window")


class Busy(Exception):
    """Another refit holds the state directory's lock."""


class Interrupted(BaseException):
    """SIGTERM arrived: stop, leave nothing half-written."""


@dataclass(frozen=True)
class StateDir:
    """The paths of a state directory (see the module docstring)."""

    root: Path

    @property
    def recording(self) -> Path:
        return self.root / "recording"

    @property
    def events(self) -> Path:
        return self.root / "events.csv"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def fit_json(self) -> Path:
        return self.models / "fit.json"

    @property
    def shadow(self) -> Path:
        return self.models / "shadow.pt"

    @property
    def decisions(self) -> Path:
        return self.models / "decisions.jsonl"

    @property
    def reports(self) -> Path:
        return self.models / "reports"


@dataclass(frozen=True)
class Request:
    """What `vigil-train refit` was asked to do."""

    state: Path
    live: Path | None = None
    out: Path | None = None
    first: bool = False
    holdout_fraction: float = DEFAULT_HOLDOUT
    holdout_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # fit options given on the command line
    threads: int = 1
    sensitivity: float = 1.0
    keep: int = DEFAULT_KEEP
    progress: bool = False


@dataclass(frozen=True)
class Decision:
    """One line of decisions.jsonl."""

    ts: str
    kind: str                       # "first" or "candidate"
    result: str                     # accepted, refused or failed
    reason: str
    candidate: str | None = None    # the candidate file (kept for accepted and refused ones)
    live: str | None = None
    installed: str | None = None    # where an accepted model was installed
    version: str | None = None      # the candidate's version
    metrics: dict[str, Any] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    holdout: dict[str, str] = field(default_factory=dict)
    trained_until: str | None = None  # the newest reading the model learnt from (at most)
    options: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def exit_code(self) -> int:
        return {"accepted": EXIT_ACCEPTED, "refused": EXIT_REFUSED}.get(self.result, EXIT_FAILED)

    def line(self) -> str:
        return json.dumps(_finite(asdict(self)), separators=(",", ":"))


def run(req: Request) -> Decision:
    """A first fit or a refit, start to end: the decision it recorded (raises Busy if one runs)."""
    state = StateDir(req.state)
    if not req.state.is_dir():
        raise DataError(f"{req.state}: no such state directory")
    state.models.mkdir(exist_ok=True)
    t0 = time.monotonic()
    with _locked(state):
        clean(state, req.out)
        stamp = _stamp(state)
        work = state.models / f".work-{stamp}"
        work.mkdir()
        try:
            with _interruptible():
                decision = (_first(req, state, stamp, work) if req.first
                            else _refit(req, state, stamp, work))
        except Interrupted:
            decision = _failed(req, "interrupted (SIGTERM); nothing installed")
        except Exception as exc:  # an unattended loop records why, whatever broke
            decision = _failed(req, _say_error(exc))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        decision = _measured(decision, time.monotonic() - t0)
        append_line(state.decisions, decision.line())
        prune(state, req.keep)
    return decision


def _failed(req: Request, reason: str) -> Decision:
    return Decision(rfc3339_ms(time.time()), "first" if req.first else "candidate", "failed", reason,
                    live=None if req.live is None else str(req.live), options=_jsonable(req.options))


def _say_error(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, VigilError | ValueError | OSError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _measured(d: Decision, wall_s: float) -> Decision:
    """The decision with the run's wall time and peak resident memory (this process or a child's)."""
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return Decision(**{**asdict(d), "wall_s": round(wall_s, 1), "peak_rss_mib": round(peak_kib / 1024, 1)})


# -- the first fit ---------------------------------------------------------------------------


def _first(req: Request, state: StateDir, stamp: str, work: Path) -> Decision:
    import numpy as np

    from agent.runtime import load_model
    from training.data import infer_period, load_events
    from training.fit import FitOptions, fit
    from training.recording import load_recording, write_events

    if req.out is None:
        raise DataError("--first needs --out MODEL: where the agent loads its model from")
    out = req.out
    if out.exists():
        raise DataError(f"{out} exists: a first fit never replaces a model (refit instead)")
    readings = load_recording(state.recording)
    events = load_events(state.events) if state.events.exists() else []
    opts0 = FitOptions(history=work, out=work, **req.options)
    keys = readings.asset * len(readings.channels) + readings.channel
    period_s = opts0.period_s or infer_period(readings.ts, keys)
    _enough(readings.span(), (opts0.window + opts0.horizon) * period_s, "the recording")
    history, events_file = work / "history.parquet", work / "events.csv"
    readings.write(history, np.ones(len(readings), dtype=bool))
    write_events(events_file, events)
    opts = FitOptions(history=history, events=events_file, out=work / "model.pt", report=work / "report",
                      threads=req.threads, progress=req.progress, **req.options)
    spec, summary = fit(opts)
    load_model(opts.out)  # the agent's own checks, once more on the file as written
    t = spec.thresholds
    if not 0.0 < t.warning <= t.critical < 1.0:
        raise DataError(f"the model's thresholds are out of range (warning {t.warning:g}, "
                        f"critical {t.critical:g})")
    stored = stored_options(opts, spec.channels, spec.period_s)
    until = rfc3339_ms(float(readings.ts.max()))
    write_atomic(state.fit_json, json.dumps({
        "model": str(out.resolve()), "version": spec.version, "written_at": rfc3339_ms(time.time()),
        "trained_until": until, "options": stored}, indent=2).encode() + b"\n")
    report = _publish_report(work / "report", state, stamp)
    with contextlib.suppress(FileNotFoundError):
        install_file(opts.out.with_suffix(".summary.json"), out.with_suffix(".summary.json"))
    install_file(opts.out, out)
    return Decision(rfc3339_ms(time.time()), "first", "accepted",
                    f"first model: {len(readings)} readings of {len(readings.assets)} assets",
                    installed=str(out), version=spec.version, metrics={"validation": summary["validation"]},
                    report=report, trained_until=until, options=stored)


# -- a refit ---------------------------------------------------------------------------------


def _refit(req: Request, state: StateDir, stamp: str, work: Path) -> Decision:
    from agent.runtime import load_model
    from training.data import load_events
    from training.fit import FitOptions, fit
    from training.judge import choose_holdout, judge, rules, validate
    from training.recording import load_recording, write_events
    from training.refit_report import render

    live_path = req.live or _stored_model(state)
    if live_path is None:
        raise DataError("no live model: pass --live MODEL (or fit the first one with --first --out MODEL)")
    # A copy, so that a promotion meanwhile cannot judge one file and compare another.
    live_copy = work / "live.pt"
    try:
        shutil.copyfile(live_path, live_copy)
    except FileNotFoundError as exc:
        raise DataError(f"live model {live_path}: no such file") from exc
    live_spec = load_model(live_copy, threads=req.threads).spec
    options = refit_options(state, req.options, live_spec)
    readings = load_recording(state.recording)
    events = load_events(state.events) if state.events.exists() else []
    min_s = (live_spec.window + live_spec.horizon) * live_spec.period_s
    holdout = choose_holdout(readings, fraction=req.holdout_fraction, duration_s=req.holdout_s, min_s=min_s,
                             seen_until=trained_until(state, live_spec.version))
    before = readings.before(holdout.cut)
    _enough({a: (lo, min(hi, holdout.cut[a])) for a, (lo, hi) in readings.span().items()}, min_s,
            "the part before the held-out one")
    history, events_file = work / "train.parquet", work / "events.csv"
    readings.write(history, before)
    # The held-out events stay out too: they would label the last training windows.
    write_events(events_file, [e for e in events if e.ts < holdout.cut.get(e.asset, math.inf)])
    model = work / "candidate.pt"
    opts = FitOptions(history=history, events=events_file, out=model, threads=req.threads,
                      progress=req.progress, **options)
    if req.progress:
        print(f"vigil-train: refit: training on {int(before.sum())} readings before "
              f"{rfc3339_ms(holdout.start)}, judging on {int((~before).sum())} after",
              file=sys.stderr, flush=True)
    spec, summary = fit(opts)
    cand = judge(model, readings, events, holdout, sensitivity=req.sensitivity, threads=req.threads)
    live = judge(live_copy, readings, events, holdout, sensitivity=req.sensitivity, threads=req.threads)
    base = Decision(rfc3339_ms(time.time()), "candidate", "failed", "", live=str(live_path),
                    version=spec.version, metrics={"candidate": cand.metrics, "live": live.metrics},
                    holdout={"from": rfc3339_ms(holdout.start), "to": rfc3339_ms(holdout.end)},
                    trained_until=rfc3339_ms(max(holdout.cut.values())),
                    options=_jsonable(options))
    problem = validate(cand, live)
    if problem is not None:
        return Decision(**{**asdict(base), "reason": f"the candidate does not validate: {problem}"})
    checks = rules(cand.metrics, live.metrics, float(options.get("false_alarms_per_30_days", 1.0)),
                   live_spec.horizon_s / 86_400.0)
    worse = [r for r in checks if not r.passed]
    result = "refused" if worse else "accepted"
    reason = ("worse than the live model on the held-out part: " + "; ".join(r.why() for r in worse)
              if worse else "not worse than the live model on the held-out part")
    kept = state.models / f"candidate-{stamp}.pt"
    render(work / "report", cand, live, checks, holdout, result, reason, summary, (kept.name, str(live_path)))
    report = _publish_report(work / "report", state, stamp)
    fsync_path(model)
    model.with_suffix(".summary.json").replace(kept.with_suffix(".summary.json"))
    model.replace(kept)
    fsync_path(state.models)
    installed = None
    if not worse:
        dest = req.out or state.shadow
        install_file(kept, dest)
        installed = str(dest)
    return Decision(**{**asdict(base), "result": result, "reason": reason, "candidate": str(kept),
                       "installed": installed, "report": report,
                       "rules": [{**asdict(r), "passed": r.passed} for r in checks]})


# A model needs this many windows' worth (window + horizon cells) of one asset's history at least:
# training and validation parts apart by a gap of one, each with whole windows and their targets.
MIN_WINDOWS = 4


def _enough(spans: dict[str, tuple[float, float]], window_s: float, what: str) -> None:
    """Raise "too little history" unless some asset's span holds MIN_WINDOWS windows and horizons."""
    longest = max((hi - lo for lo, hi in spans.values()), default=0.0)
    if longest < MIN_WINDOWS * window_s:
        raise DataError(f"too little history: {what} spans {_hours(max(longest, 0.0))} of one asset at "
                        f"most; a model needs {_hours(MIN_WINDOWS * window_s)} ({MIN_WINDOWS} x (window + "
                        "horizon))")


def refit_options(state: StateDir, given: dict[str, Any], live: Any) -> dict[str, Any]:
    """The fit options of a refit: fit.json's (the first fit's), what the command line gives, and
    what a shadow model must share with the live one (channels, period, window), from its file."""
    for k in CONTRACT:
        if k in given and given[k] != getattr(live, k):
            raise DataError(f"{k} {given[k]!r} differs from the live model's {getattr(live, k)!r}: "
                            "a candidate must read what the live model reads")
    stored = load_options(state.fit_json)
    return {**stored, "horizon": live.horizon, "fail_horizon": live.fail_horizon,
            **{k: v for k, v in given.items() if k not in CONTRACT},
            "channels": tuple(live.channels), "period_s": live.period_s, "window": live.window}


def stored_options(opts: Any, channels: tuple[str, ...], period_s: float) -> dict[str, Any]:
    """The fit options that shape a model (fit.json), with the channels and period it found."""
    out = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in RUN_FIELDS}
    out.update(channels=list(channels), period_s=period_s)
    stored: dict[str, Any] = _jsonable(out)
    return stored


def load_options(path: Path) -> dict[str, Any]:
    """fit.json's options as FitOptions keywords (absent file: none); unknown keys are an error."""
    from training.fit import FitOptions

    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        raw = doc["options"]
        if not isinstance(raw, dict):
            raise TypeError("options is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a fit.json ({exc})") from exc
    known = {f.name for f in fields(FitOptions)} - RUN_FIELDS
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"{path}: unknown fit option(s) {unknown}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def trained_until(state: StateDir, version: str) -> float | None:
    """The newest reading a model of this state directory learnt from, by its version (from the
    decision that made it); None for a model made elsewhere."""
    if not state.decisions.exists():
        return None
    found = None
    for line in state.decisions.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:  # a line cut short by a crash: the others still count
            continue
        if isinstance(d, dict) and d.get("version") == version and d.get("trained_until"):
            found = datetime.fromisoformat(d["trained_until"]).timestamp()
    return found


def _stored_model(state: StateDir) -> Path | None:
    if not state.fit_json.exists():
        return None
    try:
        model = json.loads(state.fit_json.read_text()).get("model")
    except ValueError as exc:
        raise DataError(f"{state.fit_json}: not JSON ({exc})") from exc
    return Path(model) if isinstance(model, str) else None


# -- files: atomic installs, leftovers, retention --------------------------------------------


def _publish_report(folder: Path, state: StateDir, stamp: str) -> str | None:
    """Move a finished report folder to reports/<stamp> (a rename: it appears whole)."""
    if not folder.is_dir():
        return None
    state.reports.mkdir(exist_ok=True)
    dest = state.reports / stamp
    folder.replace(dest)
    page = dest / "report.md"
    return str(page) if page.exists() else str(dest)


def clean(state: StateDir, out: Path | None = None) -> list[Path]:
    """Remove what an interrupted refit left: its work folder and temporary files."""
    found = [*state.models.glob(".work-*"), *state.models.glob(".*.tmp")]
    if state.reports.is_dir():
        found += state.reports.glob(".*")
    if out is not None and out.parent.is_dir():
        found += out.parent.glob(f".{out.name}.*.tmp")
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def prune(state: StateDir, keep: int) -> None:
    """Keep the newest `keep` candidates and reports."""
    for old in sorted(state.models.glob("candidate-*.pt"))[:-keep or None]:
        old.unlink(missing_ok=True)
        old.with_suffix(".summary.json").unlink(missing_ok=True)
    if state.reports.is_dir():
        for d in sorted(p for p in state.reports.iterdir() if not p.name.startswith("."))[:-keep or None]:
            shutil.rmtree(d, ignore_errors=True)


def _stamp(state: StateDir) -> str:
    base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stamp, k = base, 1
    while (state.models / f"candidate-{stamp}.pt").exists() or (state.reports / stamp).exists():
        k += 1
        stamp = f"{base}-{k}"
    return stamp


@contextlib.contextmanager
def _locked(state: StateDir) -> Iterator[None]:
    """One refit at a time per state directory (the lock goes with the process, also on kill -9)."""
    with (state.models / ".refit.lock").open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy(f"another refit is running in {state.models}") from exc
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM raises Interrupted here (the main thread), so the work folder is removed."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
