"""`vigil-train`: fit, evaluate and inspect model files."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from agent.errors import VigilError


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a model file from history (and events)")
    f.add_argument("--history", type=Path, required=True, help="long-format CSV/Parquet: ts,asset,channel,value")
    f.add_argument("--events", type=Path, help="events CSV: ts,asset,event (failure|maintenance)")
    f.add_argument("--format", choices=["long"], default="long", help="history layout")
    f.add_argument("--period", type=_positive_float, help="sample period in seconds (default: inferred)")
    f.add_argument("--window", type=_positive_int, default=30, help="window length W in cells")
    f.add_argument("--horizon", type=_positive_int, default=5, help="forecast horizon H in cells")
    f.add_argument("--fail-horizon", type=_positive_int, default=1440,
                   help="failure horizon in cells: fail_prob is P(failure within it)")
    f.add_argument("--max-gap", type=int, default=5, help="gaps up to this many cells are filled forward")
    f.add_argument("--hidden", type=_positive_int, default=32, help="LSTM hidden units")
    f.add_argument("--layers", type=_positive_int, default=1, help="LSTM layers")
    f.add_argument("--epochs", type=_positive_int, default=20)
    f.add_argument("--windows-per-epoch", type=_positive_int, default=40_000)
    f.add_argument("--false-alarms", type=_positive_float, default=1.0,
                   help="false-alarm budget: warnings per asset per 30 days")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=_positive_int, default=2, help="torch threads")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")

    e = sub.add_parser("evaluate", help="score a model on a history: alert and forecast metrics")
    e.add_argument("model", type=Path)
    e.add_argument("--history", type=Path, required=True)
    e.add_argument("--events", type=Path)
    e.add_argument("--max-gap", type=int, default=5)
    e.add_argument("--report", type=Path, help="directory for metrics.json")

    i = sub.add_parser("inspect", help="print a model file's metadata")
    i.add_argument("model", type=Path)
    return p


def _fit(args: argparse.Namespace) -> int:
    from training.fit import FitOptions, fit

    spec, summary = fit(FitOptions(
        history=args.history, events=args.events, out=args.out, period_s=args.period,
        window=args.window, horizon=args.horizon, fail_horizon=args.fail_horizon,
        max_gap=args.max_gap, hidden=args.hidden, layers=args.layers, epochs=args.epochs,
        windows_per_epoch=args.windows_per_epoch, false_alarms_per_30_days=args.false_alarms,
        seed=args.seed, threads=args.threads, progress=not args.quiet))
    print(json.dumps({"model": str(args.out), "version": spec.version,
                      "validation": summary["validation"], "thresholds": summary["thresholds"]}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    metrics = evaluate(args.model, args.history, args.events, max_gap=args.max_gap)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "metrics.json").write_text(text + "\n")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from agent.runtime import read_spec

    print(json.dumps(asdict(read_spec(args.model)), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"fit": _fit, "evaluate": _evaluate, "inspect": _inspect}
    try:
        return handlers[args.command](args)
    except (VigilError, ValueError, OSError) as exc:
        print(f"vigil-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vigil-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
