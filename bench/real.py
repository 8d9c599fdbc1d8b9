"""Vigil on real sensor data, with the CLI's defaults, against two classic detectors.

    .venv/bin/python bench/real.py --data ../shared/data [--work DIR] [--reuse]   (or: make bench-real)

For each data set (bench/realdata.py says what is trained on and what is scored), `vigil-train
fit` trains a model with no option but the history's layout, at the default false-alarm budget
(1 per asset per 30 days) and at a second one (10), and the streams are replayed through the
agent's pipeline (bench/detectors.py). PCA T^2+Q and River's HalfSpaceTrees run on the same
streams and are scored by the same rules (bench/events.py). Prints a table per data set, then
one JSON object as the last line. `--reuse` keeps the models of an earlier run in `--work`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import detectors as det
from events import Alert, EventScore, score_events, score_units
from realdata import Dataset, hydraulic, smd

BIN = Path(sys.executable).parent
BUDGETS = (1.0, 10.0)   # false alarms per asset per 30 days: the default, and a looser one
HYDRAULIC_UNIT = 60     # rows per cycle


def say(text: str) -> None:
    print(f"[real] {text}", file=sys.stderr, flush=True)


def fit(history: Path, out: Path, budget: float, reuse: bool) -> dict[str, Any]:
    """`vigil-train fit` with the defaults (and the budget); returns its summary."""
    if not (reuse and out.exists()):
        args = [str(BIN / "vigil-train"), "fit", "--history", str(history), "--format", "wide", "--out", str(out),
                "--quiet"]
        if budget != BUDGETS[0]:
            args += ["--false-alarms", str(budget)]
        t0 = time.monotonic()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        say(f"trained {out.name} in {time.monotonic() - t0:.0f} s")
    summary: dict[str, Any] = json.loads(out.with_suffix(".summary.json").read_text())
    return summary


def events(ds: Dataset, alerts: dict[str, list[Alert]]) -> dict[str, EventScore]:
    return {a: score_events(alerts[a], ds.labels[a], ds.period_s, ds.scored.get(a), ds.interpretation.get(a),
                            ds.channels) for a in ds.streams}


def pooled(scores: dict[str, EventScore]) -> EventScore:
    total = EventScore()
    for s in scores.values():
        total.add(s)
    return total


def baselines(ds: Dataset) -> dict[str, dict[str, list[Alert]]]:
    t0 = time.monotonic()
    pca = {a: det.Pca(ds.train[a]).alerts(s.values) for a, s in ds.streams.items()}
    hst = {a: det.hst_alerts(ds.train[a], s.values) for a, s in ds.streams.items()}
    say(f"{ds.name}: baselines in {time.monotonic() - t0:.0f} s")
    return {"pca": pca, "hst": hst}


def run_smd(root: Path, work: Path, reuse: bool) -> dict[str, Any]:
    ds, history = smd(root, work)
    runs: dict[str, dict[str, list[Alert]]] = {}
    summaries = {}
    for b in BUDGETS:
        model = work / f"smd_b{b:g}.pt"
        summaries[b] = fit(history, model, b, reuse)
        t0 = time.monotonic()
        runs[f"vigil b{b:g}"] = det.vigil(model, ds.streams, ds.channels, ds.period_s)
        say(f"smd: replayed through the agent (budget {b:g}) in {time.monotonic() - t0:.0f} s")
    runs.update(baselines(ds))
    scores = {name: events(ds, alerts) for name, alerts in runs.items()}
    print(f"\nSMD, {len(ds.streams)} machines: anomaly windows caught by onset (alert starting inside, or within "
          f"{5} rows of the start), alert precision, event-F1, false alarms per machine-day of normal time")
    header = f"{'machine':<13}" + "".join(f"{n:>26}" for n in scores)
    print(header + "\n" + "-" * len(header))
    for a in ds.streams:
        print(f"{a:<13}" + "".join(f"{_cell(s[a]):>26}" for s in scores.values()))
    total = {n: pooled(s) for n, s in scores.items()}
    print(f"{'pooled':<13}" + "".join(f"{_cell(s):>26}" for s in total.values()))
    print("cells: caught/windows  precision  event-F1  false alarms per day")
    v = total[f"vigil b{BUDGETS[0]:g}"]
    ahead = sum(scores[f"vigil b{BUDGETS[0]:g}"][a].f1 > max(scores["pca"][a].f1, scores["hst"][a].f1)
                for a in ds.streams)
    print(f"Vigil's event-F1 ahead of both baselines on {ahead} of {len(ds.streams)} machines; drivers: the "
          f"first alert of {v.driver_hits} of {v.driver_judged} caught windows named a labelled channel in its "
          f"top 3 ({_f(v.driver_top3)}; {_f(v.driver_precision)} of their top-3 channels are labelled ones)")
    for b in BUDGETS:
        s = total[f"vigil b{b:g}"]
        print(f"budget {b:g} per 30 days ({b / 30:.3f}/day): {s.false_per_day:.3f} false alarms per machine-day "
              f"of normal time; thresholds {summaries[b]['thresholds']['warning']:.6f} / "
              f"{summaries[b]['thresholds']['critical']:.6f}")
    return {"smd_onset_recall": v.recall, "smd_alert_precision": v.precision, "smd_event_f1": v.f1,
            "smd_false_alarms_per_machine_day": v.false_per_day, "smd_driver_top3": v.driver_top3,
            "smd_driver_precision": v.driver_precision,
            "smd_machines_ahead": ahead, "pca_event_f1": total["pca"].f1, "hst_event_f1": total["hst"].f1,
            "pca_onset_recall": total["pca"].recall, "hst_onset_recall": total["hst"].recall,
            "pca_false_alarms_per_machine_day": total["pca"].false_per_day,
            "hst_false_alarms_per_machine_day": total["hst"].false_per_day,
            "smd_false_alarms_per_machine_day_b10": total[f"vigil b{BUDGETS[1]:g}"].false_per_day,
            "smd_onset_recall_b10": total[f"vigil b{BUDGETS[1]:g}"].recall}


def run_hydraulic(root: Path, work: Path, reuse: bool) -> dict[str, Any]:
    ds, history = hydraulic(root, work)
    runs: dict[str, dict[str, list[Alert]]] = {}
    for b in BUDGETS:
        model = work / f"hydraulic_b{b:g}.pt"
        fit(history, model, b, reuse)
        t0 = time.monotonic()
        runs[f"vigil b{b:g}"] = det.vigil(model, ds.streams, ds.channels, ds.period_s)
        say(f"hydraulic: replayed through the agent (budget {b:g}) in {time.monotonic() - t0:.0f} s")
    runs.update(baselines(ds))
    print("\nHydraulic rig, cycles not trained on: a degraded cycle (cooler, valve or pump not as new) is "
          "flagged when a level stands in it; false alarms are alerts starting in normal cycles")
    header = f"{'':<22}" + "".join(f"{n:>14}" for n in runs)
    print(header + "\n" + "-" * len(header))
    points = {n: score_units(r["rig"], ds.labels["rig"], ds.scored["rig"], HYDRAULIC_UNIT, ds.kinds["rig"])
              for n, r in runs.items()}
    ev = {n: score_events(r["rig"], ds.labels["rig"], ds.period_s, ds.scored["rig"]) for n, r in runs.items()}
    rows: list[tuple[str, Callable[[str], str]]] = [
        ("cycle precision", lambda n: _f(points[n].precision)), ("cycle recall", lambda n: _f(points[n].recall)),
        ("cycle F1", lambda n: _f(points[n].f1)),
        ("false alarms per day", lambda n: f"{ev[n].false_per_day:.2f}"),
        *[(f"recall {k}", lambda n, k=k: _f((points[n].by_kind or {})[k])) for k in ds.kinds["rig"]],
    ]
    for label, cell in rows:
        print(f"{label:<22}" + "".join(f"{cell(n):>14}" for n in runs))
    v = f"vigil b{BUDGETS[0]:g}"
    return {"hydraulic_cycle_f1": points[v].f1, "hydraulic_cycle_precision": points[v].precision,
            "hydraulic_cycle_recall": points[v].recall, "hydraulic_false_alarms_per_day": ev[v].false_per_day,
            "hydraulic_false_alarms_per_day_b10": ev[f"vigil b{BUDGETS[1]:g}"].false_per_day,
            "hydraulic_pca_cycle_f1": points["pca"].f1, "hydraulic_hst_cycle_f1": points["hst"].f1,
            "hydraulic_recall_by_kind": points[v].by_kind}


def _f(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _cell(s: EventScore) -> str:
    return f"{s.caught}/{s.windows} {_f(s.precision)} {_f(s.f1)} {s.false_per_day:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the folder holding smd/ and hydraulic/")
    ap.add_argument("--work", type=Path, help="keep histories and models here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="use the models already in --work")
    ap.add_argument("--only", choices=["smd", "hydraulic"], help="one data set only")
    args = ap.parse_args(argv)
    for name in ("smd", "hydraulic"):
        if not (args.data / name).is_dir():
            ap.error(f"{args.data / name} is not a folder: --data names the folder that holds smd/ and hydraulic/")
    with tempfile.TemporaryDirectory(prefix="vigil-real-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {}
        if args.only in (None, "smd"):
            result.update(run_smd(args.data, work, args.reuse))
        if args.only in (None, "hydraulic"):
            result.update(run_hydraulic(args.data, work, args.reuse))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
