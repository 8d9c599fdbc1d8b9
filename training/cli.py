"""`vigil-train`: fit, evaluate and inspect model files."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import VigilError
from training.baselines import BASELINES
from training.data import FORMATS
from training.regimes import SCALINGS
from training.split import SPLITS

if TYPE_CHECKING:
    from agent.spec import ModelSpec


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _duration(text: str) -> float:
    """A duration argument: seconds, or a number with a unit ("90s", "30m", "12h", "3d")."""
    from agent.config import parse_duration

    try:
        return parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _names(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a model file from history (and events)",
                       description="Train, calibrate and export a model. Options left out take the "
                       "format's defaults (C-MAPSS: see docs/training.md).")
    f.add_argument("--history", type=Path, required=True,
                   help="history: a long or wide CSV/Parquet file, a folder of Parquet files (plain or "
                   "partitioned by asset= or date=), or a C-MAPSS train_FD00x.txt")
    f.add_argument("--events", type=Path, help="events CSV: ts,asset,event (failure|maintenance)")
    f.add_argument("--format", dest="fmt", choices=FORMATS, default="long", help="history layout")
    f.add_argument("--channels", type=_names, help="comma-separated channels to use, in this order")
    f.add_argument("--regime-channels", type=_names,
                   help="channels that set the operating regime (per-regime normalisation)")
    f.add_argument("--regimes", dest="n_regimes", type=int, help="number of regimes (default: found)")
    f.add_argument("--scaling", choices=SCALINGS,
                   help="normalisation: robust (median and interquartile spread; the default), z-score "
                   "or min-max (C-MAPSS: z)")
    f.add_argument("--clip", type=float,
                   help="normalised inputs beyond +-CLIP are clipped (default 30; 0: never)")
    f.add_argument("--split", choices=SPLITS,
                   help="validation: whole assets (asset), each asset's last part after a gap (time), or "
                   "auto: by asset with 20 assets or more or failures on 4 or more, else by time")
    f.add_argument("--baseline", choices=BASELINES,
                   help="asset: every asset against its own median and spread (machines whose levels "
                   "differ share a model); fleet: one normalisation for all; auto (default): asset when "
                   "the assets' levels differ by more than 10 of their own spreads")
    f.add_argument("--period", dest="period_s", type=_positive_float,
                   help="sample period in seconds (default: inferred)")
    f.add_argument("--window", type=_positive_int, help="window length W in cells (default 30)")
    f.add_argument("--horizon", type=_positive_int, help="forecast horizon H in cells (default 5)")
    f.add_argument("--fail-horizon", type=_positive_int,
                   help="failure horizon in cells: fail_prob is P(failure within it) (default 1440)")
    f.add_argument("--max-gap", type=int, help="gaps up to this many cells are filled forward (default 5)")
    f.add_argument("--hold", dest="hold_s", type=_duration, metavar="DURATION",
                   help="report by exception: a channel's last value fills the cells after it for this "
                        "long (e.g. 10m, 7d; default 0: max-gap only), as the agent's subscription `hold`; "
                        "recorded in the model file")
    f.add_argument("--rul-cap", type=float,
                   help="RUL head with piecewise-linear target min(RUL, cap) in cells; 0 = none")
    f.add_argument("--no-forecast", dest="forecast", action="store_false", default=None,
                   help="no forecast heads (then risk comes from the failure head alone)")
    f.add_argument("--cell", choices=["lstm", "gru", "rnn"], help="recurrent cell (default lstm)")
    f.add_argument("--encoder", choices=["recurrent", "trend"],
                   help="the recurrent cell, or an MLP on the window's recent levels and slopes "
                        "(training/trend.py; --hidden sets its width, --dropout its input dropout)")
    f.add_argument("--pool", choices=["last", "attention"],
                   help="what the heads read: the last state, or attention over the window (default last)")
    f.add_argument("--hidden", type=_positive_int,
                   help="LSTM hidden units (with --encoder trend: the width of its last layer)")
    f.add_argument("--smooth", type=_fraction,
                   help="exponential smoothing of the window inside the model, alpha (0: off)")
    f.add_argument("--members", type=_positive_int,
                   help="train this many networks (own seeds) and average them in one file")
    f.add_argument("--member-processes", type=_positive_int,
                   help="processes the members train in side by side, each with threads / processes "
                   "torch threads (default: min(members, threads)); 1: one after the other in this process")
    f.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="after validation has chosen each member's epochs (and calibrated), train the "
                   "members again on training and validation assets together and ship those "
                   "(docs/training.md; on in the cmapss preset: --no-refit turns it off)")
    f.add_argument("--vae", action="store_true", default=None,
                   help="add an LSTM-VAE anomaly scorer (trained on healthy windows) to the model file; "
                   "its signal joins the risk (docs/families.md)")
    f.add_argument("--vae-epochs", type=_positive_int, help="VAE training epochs (default 10)")
    f.add_argument("--vae-latent", type=_positive_int, help="VAE latent dimensions (default 8)")
    f.add_argument("--augment", choices=["none", "gan"],
                   help="gan: a recurrent WGAN-GP trained on the training split's pre-failure windows adds "
                   "synthetic positives for the failure head (default none; docs/families.md)")
    f.add_argument("--gan-steps", type=_positive_int, help="GAN generator updates (default 400)")
    f.add_argument("--gan-factor", type=_positive_float,
                   help="synthetic windows per real pre-failure training window (default 2)")
    f.add_argument("--layers", type=_positive_int, help="LSTM layers")
    f.add_argument("--dropout", type=_fraction, help="dropout after the LSTM (and between layers); "
                   "with --encoder trend, on its input features")
    f.add_argument("--epochs", type=_positive_int)
    f.add_argument("--windows-per-epoch", type=_positive_int)
    f.add_argument("--batch-size", type=_positive_int)
    f.add_argument("--lr", type=_positive_float, help="peak learning rate (warm-up, then cosine)")
    f.add_argument("--patience", type=_positive_int, help="epochs without improvement before stopping")
    f.add_argument("--val-fraction", type=_fraction, help="share of assets for validation")
    f.add_argument("--test-fraction", type=_fraction, help="share of assets held out for test")
    f.add_argument("--false-alarms", dest="false_alarms_per_30_days", type=_positive_float,
                   help="false-alarm budget: warnings per asset per 30 days on healthy data (default 1); "
                   "the agent's [model] sensitivity moves it later without a refit")
    f.add_argument("--seed", type=int)
    f.add_argument("--threads", type=_positive_int, help="torch threads")
    f.add_argument("--checkpoint", type=Path, help="checkpoint file, written every epoch")
    f.add_argument("--resume", action="store_true", default=None, help="continue from --checkpoint")
    f.add_argument("--stop-after", type=_positive_int, help="stop after N epochs (resume later)")
    f.add_argument("--shards", type=_positive_int,
                   help="each epoch deals the training assets to this many shards (default 8); under "
                   "torchrun the number of processes must divide it, and a resumed run keeps it")
    f.add_argument("--shard-windows", type=_positive_int,
                   help="windows a shard loads at a time, as whole assets (default 200000): bounds memory")
    f.add_argument("--report", type=Path, help="directory for a validation report (Markdown + PNG)")
    f.add_argument("--stream", action="store_true", default=None,
                   help="never hold the whole history: stream it through a gridded cache on disk and train "
                   "on a bounded choice of assets (docs/training.md, Large histories)")
    f.add_argument("--stream-budget", type=_positive_int,
                   help="--stream: readings held in memory while reading (default 2000000)")
    f.add_argument("--stream-cells", type=_positive_int,
                   help="--stream: grid cells of whole assets each split takes into memory (default 1000000)")
    f.add_argument("--work-dir", type=Path,
                   help="--stream: an empty folder for the cache (default: a temporary one, removed after)")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")
    f.add_argument("--onnx", action="store_true",
                   help='also write the model as ONNX beside --out (same name, .onnx), checked against '
                   'the eager model, for [model] runtime = "onnx" (needs the onnx extra)')

    e = sub.add_parser("evaluate", help="score a model on a history: RUL, alert and forecast metrics")
    e.add_argument("model", type=Path)
    e.add_argument("data", type=Path, nargs="?", help="history file (or use --history)")
    e.add_argument("--history", type=Path)
    e.add_argument("--events", type=Path)
    e.add_argument("--format", dest="fmt", choices=FORMATS, default="long")
    e.add_argument("--rul", type=Path, help="C-MAPSS RUL_FD00x.txt for a test file (default: beside it)")
    e.add_argument("--max-gap", type=int, default=5)
    e.add_argument("--hold", dest="hold_s", type=_duration, metavar="DURATION",
                   help="how long a channel's last value fills the cells after it (default: the model's)")
    e.add_argument("--report", type=Path, help="directory for metrics.json, report.md and plots")

    i = sub.add_parser("inspect", help="print a model file's metadata")
    i.add_argument("model", type=Path)
    _refit_parser(sub)
    return p


def _holdout(text: str) -> tuple[float | None, float | None]:
    """A fraction of the recording's event time (0.2) or a duration (seconds, or 90m, 12h, 2d)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            v = float(t[:-1]) * units[t[-1]]
        else:
            v = float(t)
            if 0 < v < 1:
                return v, None
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1) or a duration such as 36h or 2d, got {text}")
    return None, v


def _refit_parser(sub: Any) -> None:
    from training.refit import DEFAULT_HOLDOUT, DEFAULT_KEEP, EXIT_BUSY, EXIT_FAILED, EXIT_REFUSED

    r = sub.add_parser(
        "refit", help="train a candidate from an agent's recording, judge it against the live model, "
        "install it as the shadow model when it is not worse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a candidate model from the agent's state directory (recording/ and "
        "events.csv) on all but the most recent part of the recording, judge it against the live model "
        "on that part as the agent would run both, write a report, and install it as models/shadow.pt "
        "when it is not worse (README: Learning and refits). Prints one JSON line: the decision, also "
        "appended to models/decisions.jsonl. With --first, fit the first model on everything to --out.",
        epilog=f"exit status: 0 accepted (installed), {EXIT_REFUSED} refused (worse than the live model), "
        f"{EXIT_FAILED} failed (training error, too little history, a model that does not validate, "
        f"bad input), {EXIT_BUSY} busy (another refit holds the state directory). Refused and failed "
        "refits leave the live model and shadow.pt as they were.")
    r.add_argument("--state", type=Path, required=True, help="the agent's state directory")
    r.add_argument("--live", type=Path,
                   help="the live model file (default: the model fit.json names, the first fit's --out)")
    r.add_argument("--out", type=Path,
                   help="where an accepted candidate goes (default DIR/models/shadow.pt); with --first, "
                   "the model file to write (required; never replaced)")
    r.add_argument("--first", action="store_true",
                   help="no live model yet: fit the first one on the whole recording, write fit.json")
    r.add_argument("--holdout", type=_holdout, default=(DEFAULT_HOLDOUT, None),
                   help=f"the most recent part held out for judging: a fraction of the event time "
                   f"(default {DEFAULT_HOLDOUT:g}) or a duration (36h, 2d); at least window + horizon cells")
    r.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    r.add_argument("--sensitivity", type=_positive_float, default=1.0,
                   help="judge with the agent's [model] sensitivity (default 1)")
    r.add_argument("--keep", type=_positive_int, default=DEFAULT_KEEP,
                   help=f"candidates and reports kept in models/ (default {DEFAULT_KEEP})")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    g = r.add_argument_group("fit options", "override fit.json (the first fit's options) for this run; "
                             "a refit always keeps the live model's channels, period and window")
    g.add_argument("--epochs", type=_positive_int)
    g.add_argument("--seed", type=int)
    g.add_argument("--hidden", type=_positive_int)
    g.add_argument("--layers", type=_positive_int)
    g.add_argument("--dropout", type=_fraction)
    g.add_argument("--lr", type=_positive_float)
    g.add_argument("--patience", type=_positive_int)
    g.add_argument("--windows-per-epoch", type=_positive_int)
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--members", type=_positive_int)
    g.add_argument("--false-alarms", dest="false_alarms_per_30_days", type=_positive_float)
    g.add_argument("--split", choices=SPLITS)
    g.add_argument("--baseline", choices=BASELINES)
    g.add_argument("--cell", choices=["lstm", "gru", "rnn"])
    g.add_argument("--encoder", choices=["recurrent", "trend"])
    g.add_argument("--val-fraction", type=_fraction)
    g.add_argument("--horizon", type=_positive_int)
    g.add_argument("--fail-horizon", type=_positive_int)
    g.add_argument("--window", type=_positive_int, help="--first only")
    g.add_argument("--period", dest="period_s", type=_positive_float, help="--first only")
    g.add_argument("--channels", type=_names, help="--first only")
    g.add_argument("--regime-channels", type=_names)


def fit_options(args: argparse.Namespace) -> Any:
    """FitOptions from the command line: the format's preset, overridden by what was given."""
    from training.fit import FitOptions, cmapss_options

    names = {f.name for f in fields(FitOptions)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    given["progress"] = not args.quiet
    if args.fmt == "cmapss":
        return cmapss_options(**given)
    return FitOptions(**given)


def _fit(args: argparse.Namespace) -> int:
    from training.distributed import session
    from training.fit import fit

    opts = fit_options(args)
    if opts.resume and opts.checkpoint is None:
        raise ValueError("--resume needs --checkpoint")
    if args.onnx:
        _require_onnx()  # before training, not after
    # Under torchrun this process joins the run (DDP); on its own it trains alone.
    with session() as ctx:
        spec, summary = fit(opts, ctx)
    if ctx.is_writer:
        _finish_fit(args, spec, summary)
    return 0


def _finish_fit(args: argparse.Namespace, spec: ModelSpec, summary: dict[str, Any]) -> None:
    """The writer's last steps: the ONNX copy if asked, and the one-line JSON result."""
    extra: dict[str, Any] = {}
    if args.onnx:
        from training.export import export_onnx_beside

        extra["onnx"] = str(export_onnx_beside(args.out)[0])
    print(json.dumps({"model": str(args.out), **extra, "version": spec.version, "heads": list(spec.heads),
                      "validation": summary["validation"], "thresholds": summary["thresholds"],
                      **({"test": summary["test"]} if "test" in summary else {}),
                      **({"augment": summary["augment"]} if "augment" in summary else {})}))


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--onnx needs {', '.join(missing)}: pip install 'vigil[onnx]'")


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_file

    history = args.history or args.data
    if history is None:
        raise ValueError("evaluate needs a history file (DATA or --history)")
    ev = evaluate_file(args.model, history, args.events, fmt=args.fmt, rul_file=args.rul,
                       max_gap=args.max_gap, hold_s=args.hold_s)
    print(json.dumps(ev.metrics, indent=2))
    if args.report:
        from training.report import render

        page = render(ev, args.report, title=f"Vigil model evaluation: {history.name}")
        print(f"report: {page}", file=sys.stderr)
    return 0


def _refit(args: argparse.Namespace) -> int:
    from training.fit import FitOptions
    from training.refit import EXIT_BUSY, EXIT_FAILED, RUN_FIELDS, Busy, Request, run

    names = {f.name for f in fields(FitOptions)} - RUN_FIELDS
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    fraction, seconds = args.holdout
    req = Request(state=args.state, live=args.live, out=args.out, first=args.first,
                  holdout_fraction=fraction or 0.0, holdout_s=seconds, options=given, threads=args.threads,
                  sensitivity=args.sensitivity, keep=args.keep, progress=not args.quiet)
    try:
        decision = run(req)
    except Busy as exc:
        print(f"vigil-train: refit busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except (VigilError, ValueError, OSError) as exc:
        print(f"vigil-train: refit failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(decision.line(), flush=True)
    if decision.result != "accepted":
        print(f"vigil-train: refit {decision.result}: {decision.reason}", file=sys.stderr)
    return decision.exit_code


def _inspect(args: argparse.Namespace) -> int:
    from agent.runtime import read_spec

    print(json.dumps(asdict(read_spec(args.model)), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"fit": _fit, "evaluate": _evaluate, "inspect": _inspect, "refit": _refit}
    try:
        code = handlers[args.command](args)
    except (VigilError, ValueError, OSError) as exc:
        print(f"vigil-train: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("vigil-train: interrupted", file=sys.stderr)
        code = 130
    if args.command == "fit":
        _leave_if_distributed(code)
    return code


def _leave_if_distributed(code: int) -> None:
    """Under torchrun, exit now, done or failed, rather than through Python's shutdown.

    There a gloo thread still releasing a finished collective can abort the process
    (`training.distributed.leave` says how), turning exit 0 or 1 into SIGABRT.
    """
    from training.distributed import from_env, leave

    try:
        ctx, _ = from_env()
    except ValueError:  # torchrun's variables are bad: no group was ever joined
        return
    if ctx.active:
        leave(code)


if __name__ == "__main__":
    sys.exit(main())
