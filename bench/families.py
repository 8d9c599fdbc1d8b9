"""The model families side by side: LSTM baseline, GRU, RNN, LSTM + VAE signal, LSTM + GAN augmentation.

    python bench/families.py [--data ../shared/data/cmapss] [--seeds 3] [--jobs N] [--quick] [--out FILE.md]

Two data sets, one run:
- `plant`: the simulated pump plant (sim.plant) with few failures: 50 pumps over 10 days, of
  which 3 are driven to failure (the rest stay healthy). Assets are split train / validation
  / test by seed (one failing pump in each); metrics are on the test pumps, through the
  exported model file and the agent's own risk and level code.
- `cmapss`: NASA C-MAPSS FD001 under its protocol (docs/training.md): the training file for
  training and validation, the test file with RUL_FD001.txt for every metric.

Each variant x seed is one `training.fit.fit` call with the data set's options plus the
variant's (`cell`, `vae`, `augment`), run in `--jobs` processes with one torch thread each.
Per variant: PR-AUC of failure within the horizon (of the combined risk the agent alerts on),
mean lead time of the first warning before a caught failure, false warnings (plant: per
asset-day; C-MAPSS: per test engine), RUL RMSE (C-MAPSS), parameters and ms per window (agent
side: normalise + forward, one thread, batch 1), as mean ± sd over seeds. Prints a Markdown
table and, as its last line, one JSON object keyed by variant (then data set).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.plant import CHANNELS, DAY, Plant, PlantConfig

VARIANTS: dict[str, dict[str, Any]] = {
    "lstm": {},
    "gru": {"cell": "gru"},
    "rnn": {"cell": "rnn"},
    "lstm+vae": {"vae": True},
    "lstm+gan": {"augment": "gan"},
}
DATASETS = ("plant", "cmapss")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PlantSpec:
    """The simulated plant: n pumps, `failing` of them driven to failure, the rest never fail."""

    assets: int = 50
    failing: int = 3
    days: float = 10.0
    seed: int = 11


@dataclass(frozen=True)
class Job:
    dataset: str
    variant: str
    seed: int
    history: Path
    events: Path | None
    test: Path | None
    rul: Path | None
    work: Path
    quick: bool


def write_plant(spec: PlantSpec, out: Path) -> tuple[Path, Path]:
    """A wide history (ts, asset, channels...) and its events: only `failing` pumps ever fail.

    Natural wear is switched off (onset far beyond the run); the failing pumps are driven to
    failure with `Plant.force_failure`, their degradation starting on different days, so each
    has days of healthy running, 2-3 days of wear, a failure and a repair in the history.
    """
    cfg = PlantConfig(n_assets=spec.assets, seed=spec.seed, onset_mean_s=1e6 * DAY)
    plant = Plant(cfg, 1_767_225_600.0)
    rng = np.random.default_rng(spec.seed)
    steps = int(spec.days * DAY / cfg.period_s)
    chosen = rng.choice(spec.assets, spec.failing, replace=False)
    # Start of wear for each failing pump, and its length (2-3 days, at most 60 % of the run):
    # the failure falls well inside the run, with healthy running before it and after the repair.
    start = {int(a): int(rng.uniform(0.1, 0.25) * steps) for a in chosen}
    life = {int(a): float(min(rng.uniform(2.0, 3.0) * DAY, 0.6 * spec.days * DAY)) for a in chosen}
    hist, ev = out / "history.csv", out / "events.csv"
    names = cfg.asset_names
    with hist.open("w", newline="") as fh, ev.open("w", newline="") as fe:
        wh, we = csv.writer(fh), csv.writer(fe)
        wh.writerow(("ts", "asset", *CHANNELS))
        we.writerow(("ts", "asset", "event"))
        for k in range(steps):
            for a, s in start.items():
                if k == s:
                    plant.force_failure(a, life[a])
            st = plant.step()
            ts = int(st.ts)
            for i, name in enumerate(names):
                if st.up[i]:
                    wh.writerow((ts, name, *(repr(float(v)) for v in st.values[i])))
            for e_ts, asset, event in st.events:
                we.writerow((int(e_ts), asset, event))
    return hist, ev


def _options(job: Job) -> Any:
    """fit options: the data set's, then the variant's, then the quick shrink."""
    from training.fit import FitOptions, cmapss_options

    variant = dict(VARIANTS[job.variant])
    out = job.work / f"{job.dataset}-{job.variant}-s{job.seed}.pt"
    common: dict[str, Any] = {"seed": job.seed, "threads": 1, "progress": False}
    if job.quick:
        common.update(epochs=2, windows_per_epoch=3000, hidden=16, vae_epochs=1, gan_steps=10, patience=2)
    if job.dataset == "cmapss":
        # The cells are the comparison: the C-MAPSS preset's LSTMs, not its trend encoder.
        return cmapss_options(job.history, out, encoder="recurrent", **common, **variant)
    return replace(FitOptions(history=job.history, events=job.events, out=out, fmt="wide", window=30,
                              horizon=5, fail_horizon=1440, val_fraction=0.25, test_fraction=0.25,
                              hidden=32, epochs=20, windows_per_epoch=40_000),
                   **common, **variant)


def run_job(job: Job) -> dict[str, Any]:
    """One fit and its test metrics (runs in a worker process with one torch thread)."""
    import torch

    from bench.cmapss import ms_per_window
    from training.evaluate import evaluate_file
    from training.fit import fit

    torch.set_num_threads(1)
    opts = _options(job)
    t0 = time.monotonic()
    spec, summary = fit(opts)
    seconds = time.monotonic() - t0
    if job.dataset == "cmapss":
        assert job.test is not None
        ev = evaluate_file(opts.out, job.test, fmt="cmapss", rul_file=job.rul)
        m = ev.metrics
        # A test engine can be warned about only if its failure is within the horizon of its last cycle.
        last = ev.ws.last_per_asset()
        reachable = float((ev.ws.rul[last] <= spec.fail_horizon).sum())
    else:
        m = summary["test"]
        reachable = m.get("failures", 0.0)
    rng = np.random.default_rng(0)
    norm = spec.normalisation
    raw = np.asarray(norm.mean) + np.asarray(norm.std) * rng.normal(size=(4, spec.window, spec.n_channels))
    assets = max(m.get("assets", 1.0), 1.0)
    row: dict[str, Any] = {
        "dataset": job.dataset, "variant": job.variant, "seed": job.seed,
        "pr_auc": m.get("risk_pr_auc", math.nan), "fail_pr_auc": m.get("fail_pr_auc", math.nan),
        "anomaly_pr_auc": m.get("anomaly_pr_auc", math.nan),
        "lead_time_s": m.get("mean_lead_time_s", math.nan),
        "failures": reachable, "caught": m.get("failures_caught", 0.0),
        "false_per_asset_day": m.get("false_warnings_per_asset_day", math.nan),
        "false_per_asset": m.get("false_warnings", math.nan) / assets,
        "rul_rmse": m.get("rul_rmse", math.nan), "params": summary["params"],
        "ms_per_window": ms_per_window(opts.out, raw, 1, 30 if job.quick else 300),
        "train_seconds": round(seconds, 1), "epochs": summary["epochs_run"],
    }
    if "augment" in summary:
        a = summary["augment"]
        row.update(gan_spread_ratio=a["spread_ratio"], gan_nn_ratio=a["nn_ratio"],
                   gan_collapsed=a["collapsed"], gan_windows=a["windows"])
    return row


METRICS = ("pr_auc", "lead_time_s", "false", "rul_rmse", "params", "ms_per_window", "train_seconds")


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of each metric (NaN-free values only), per variant and data set."""
    out: dict[str, Any] = {}
    for r in rows:
        out.setdefault(r["variant"], {}).setdefault(r["dataset"], []).append(r)
    agg: dict[str, Any] = {}
    for variant in VARIANTS:
        for dataset, rs in out.get(variant, {}).items():
            cell: dict[str, Any] = {"seeds": len(rs)}
            false_key = "false_per_asset_day" if dataset == "plant" else "false_per_asset"
            keys = ["pr_auc", "fail_pr_auc", "anomaly_pr_auc", "lead_time_s", false_key, "rul_rmse",
                    "params", "ms_per_window", "train_seconds", "caught", "failures", "gan_spread_ratio",
                    "gan_nn_ratio"]
            for k in keys:
                vals = [float(r[k]) for r in rs if k in r and math.isfinite(float(r[k]))]
                if not vals:
                    continue
                name = "false" if k == false_key else k
                cell[name] = round(statistics.mean(vals), 5)
                cell[name + "_sd"] = round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0
            if any(r.get("gan_collapsed") for r in rs):
                cell["gan_collapsed_seeds"] = sum(bool(r.get("gan_collapsed")) for r in rs)
            agg.setdefault(variant, {})[dataset] = cell
    return agg


def _fmt(c: dict[str, Any], k: str, digits: int) -> str:
    if k not in c:
        return "-"
    return f"{c[k]:.{digits}f} ± {c[k + '_sd']:.{digits}f}"


def table(agg: dict[str, Any], datasets: list[str]) -> str:
    lines: list[str] = []
    for ds in datasets:
        unit = "per asset-day" if ds == "plant" else "per test engine"
        lead = "h" if ds == "plant" else "cycles"
        lines += [f"**{ds}** (mean ± sd over seeds; false warnings {unit}; lead time in {lead})", "",
                  "| variant | PR-AUC (risk) | PR-AUC (fail head) | lead time | false warnings "
                  "| caught / in reach | RUL RMSE | params | ms/window | train s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in VARIANTS:
            c = agg.get(v, {}).get(ds)
            if c is None:
                continue
            scale = 3600.0 if ds == "plant" else 1.0
            lt = (f"{c['lead_time_s'] / scale:.1f} ± {c['lead_time_s_sd'] / scale:.1f}"
                  if "lead_time_s" in c else "-")
            caught = f"{c.get('caught', 0):.1f} / {c.get('failures', 0):.1f}"
            lines.append(f"| {v} | {_fmt(c, 'pr_auc', 3)} | {_fmt(c, 'fail_pr_auc', 3)} | {lt} | "
                         f"{_fmt(c, 'false', 3)} | {caught} | {_fmt(c, 'rul_rmse', 2)} | {c['params']:.0f} | "
                         f"{_fmt(c, 'ms_per_window', 3)} | {c['train_seconds']:.0f} |")
        gan = agg.get("lstm+gan", {}).get(ds)
        if gan and "gan_spread_ratio" in gan:
            lines += ["", f"GAN diversity ({ds}): spread ratio generated/real "
                      f"{_fmt(gan, 'gan_spread_ratio', 2)}, nearest-neighbour ratio "
                      f"{_fmt(gan, 'gan_nn_ratio', 2)}, collapsed in "
                      f"{gan.get('gan_collapsed_seeds', 0)} of {gan['seeds']} seeds."]
        vae = agg.get("lstm+vae", {}).get(ds)
        if vae and "anomaly_pr_auc" in vae:
            lines += ["", f"VAE signal alone ({ds}): PR-AUC {_fmt(vae, 'anomaly_pr_auc', 3)}."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cmapss",
                   help="folder with train_/test_/RUL_FD001.txt (default ../shared/data/cmapss)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--jobs", type=int, default=1, help="parallel fits, one torch thread each (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny smoke run: small plant, 2 epochs, tiny models")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: plant, cmapss")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated among {', '.join(VARIANTS)}")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    p.add_argument("--rows", type=Path,
                   help="append each finished fit's row here as JSON lines (partial results)")
    p.add_argument("--from-rows", type=Path,
                   help="no fits: the table and JSON from a --rows file of an earlier (even partial) run")
    args = p.parse_args(argv)
    if args.from_rows is not None:
        done = [json.loads(line) for line in args.from_rows.read_text().splitlines() if line.strip()]
        agg = aggregate(done)
        print(table(agg, [d for d in DATASETS if any(r["dataset"] == d for r in done)]))
        print(json.dumps(agg))
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    variants = [v for v in args.variants.split(",") if v]
    bad = [d for d in datasets if d not in DATASETS] + [v for v in variants if v not in VARIANTS]
    if bad or args.seeds < 1 or args.jobs < 1:
        print(f"families bench: error: unknown {bad} or seeds/jobs < 1", file=sys.stderr)
        return 1
    if "cmapss" in datasets:
        for kind in ("train", "test", "RUL"):
            if not (args.data / f"{kind}_FD001.txt").exists():
                missing = args.data / f"{kind}_FD001.txt"
                print(f"families bench: error: {missing}: no such file", file=sys.stderr)
                return 1
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs: list[Job] = []
        if "plant" in datasets:
            ps = PlantSpec(assets=12, failing=3, days=4.0) if args.quick else PlantSpec()
            hist, ev = write_plant(ps, work)
            print(f"plant: {ps.assets} pumps, {ps.failing} driven to failure, {ps.days:g} days",
                  file=sys.stderr, flush=True)
            jobs += [Job("plant", v, s, hist, ev, None, None, work, args.quick)
                     for v in variants for s in range(args.seeds)]
        if "cmapss" in datasets:
            jobs += [Job("cmapss", v, s, args.data / "train_FD001.txt", None, args.data / "test_FD001.txt",
                         args.data / "RUL_FD001.txt", work, args.quick)
                     for v in variants for s in range(args.seeds)]
        # Longest first (C-MAPSS, then the variants that train a second network), so the last
        # wave is not one long job alone.
        jobs.sort(key=lambda j: (j.dataset != "cmapss", j.variant not in ("lstm+vae", "lstm+gan")))
        rows: list[dict[str, Any]] = []
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, j): j for j in jobs}
            for fut in as_completed(futures):
                j = futures[fut]
                row = fut.result()
                rows.append(row)
                print(f"[{len(rows)}/{len(jobs)} {time.monotonic() - t0:.0f}s] "
                      f"{j.dataset} {j.variant} seed {j.seed}: PR-AUC {row['pr_auc']:.3f}, "
                      f"RUL RMSE {row['rul_rmse']:.2f}, {row['train_seconds']:.0f} s",
                      file=sys.stderr, flush=True)
                if args.rows is not None:
                    with args.rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    agg = aggregate(rows)
    text = table(agg, datasets)
    text += (f"\n{len(jobs)} fits, {args.seeds} seeds, {args.jobs} parallel jobs, "
             f"{time.monotonic() - t0:.0f} s in all.")
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n\n```json\n" + json.dumps(agg, indent=1) + "\n```\n")
    print(json.dumps(agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
