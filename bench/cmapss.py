"""NASA C-MAPSS benchmark under the standard protocol (../shared/data/cmapss/README.md).

    python bench/cmapss.py --data ../shared/data/cmapss --subset FD001 [--seeds 3] [--encoder trend]

For each seed: `vigil-train fit --format cmapss` on train_FD00x.txt (validation engines drawn
from that file, early stopping on them; the test file is never seen in training), then one
prediction per test engine from the window ending at its last cycle, through the agent's
runtime on the exported TorchScript file, against RUL_FD00x.txt (truth not clipped; the same
predictions against the truth clipped at the RUL cap, as some papers score, are printed beside).
Test engines shorter than the window are padded with their first cycle. Prints a table
beside the published anchors, then, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.runtime import load_model
from bench.harness import cpu_seconds_with_children
from training.cmapss import load_cmapss
from training.evaluate import nasa_score
from training.fit import cmapss_options, fit

# Test RMSE / NASA score on FD001, last-cycle protocol (README of the data set).
ANCHORS = (("LSTM, Zheng et al. 2017", 16.14, 338.0), ("Deep CNN, Li, Ding & Sun 2018", 12.61, 273.7),
           ("Attention/transformer models 2022-24", 10.6, 169.0))


def last_windows(test: Path, rul: Path, channels: tuple[str, ...], window: int
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each test engine's raw window ending at its last cycle (padded with its first cycle) and its RUL."""
    data = load_cmapss(test, rul, channels=channels)
    assert data.truth is not None
    names, xs, truth = [], [], []
    for s in data.history.assets:
        g = s.grid[-window:]
        if len(g) < window:
            g = np.concatenate([np.repeat(g[:1], window - len(g), axis=0), g])
        names.append(s.asset)
        xs.append(g)
        truth.append(data.truth[s.asset])
    return names, np.stack(xs), np.asarray(truth)


def ms_per_window(model: Path, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median agent-side cost of one window (normalise + TorchScript forward) on one thread, in ms."""
    import torch

    torch.set_num_threads(1)
    rt = load_model(model, threads=1)
    xb = np.repeat(x[:1], batch, axis=0) if len(x) < batch else x[:batch]
    for _ in range(10):
        rt.infer(rt.spec.normalise(xb))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.infer(rt.spec.normalise(xb))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0 / batch


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    train = args.data / f"train_{args.subset}.txt"
    out = work / f"{args.subset}_seed{seed}.pt"
    chosen = {k: v for k, v in (("encoder", args.encoder), ("cell", args.cell), ("pool", args.pool)) if v}
    opts = cmapss_options(train, out, seed=seed, threads=args.threads, progress=not args.quiet, **chosen)
    t0, c0 = time.monotonic(), cpu_seconds_with_children()
    spec, summary = fit(opts)
    seconds, cpu = time.monotonic() - t0, cpu_seconds_with_children() - c0
    rt = load_model(out, threads=1)
    _, x, truth = last_windows(args.data / f"test_{args.subset}.txt", args.data / f"RUL_{args.subset}.txt",
                               spec.channels, spec.window)
    pred = rt.infer(rt.spec.normalise(x)).rul
    assert pred is not None
    d = pred.astype(np.float64) - truth
    clipped = np.minimum(truth, spec.rul_cap)
    return {
        "seed": seed, "rmse": float(np.sqrt(np.mean(d**2))), "score": nasa_score(pred, truth),
        "mae": float(np.mean(np.abs(d))),
        # Not the protocol's figure (nor the target's): comparable only with papers that clip the truth.
        "rmse_truth_clipped": float(np.sqrt(np.mean((pred - clipped) ** 2))),
        "score_truth_clipped": nasa_score(pred, clipped),
        # Validation engines run to failure: every window against the capped target (with a
        # refit, the figure of the first fit, before the refit trained on those engines too).
        "val_rmse": summary["validation"].get("rul_rmse_all_windows", float("nan")),
        "params": summary["params"], "members": len(summary["members"]), "refit": "refit" in summary,
        "encoder": opts.encoder, "cell": opts.cell if opts.encoder == "recurrent" else None,
        "train_seconds": seconds, "train_cpu_seconds": cpu,
        # Each member's epochs run (and its best), member 0 first.
        "epochs": [m["epochs_run"] for m in summary["members"]],
        "best_epoch": [m["best_epoch"] for m in summary["members"]],
        "regimes": summary["regimes"], "rul_cap": spec.rul_cap,
        "window": spec.window, "ms_per_window": ms_per_window(out, x, 1, 300),
        "ms_per_window_batch100": ms_per_window(out, x, 100, 30), "test_engines": len(truth),
    }


def table(args: argparse.Namespace, rows: list[dict[str, Any]], agg: dict[str, Any]) -> str:
    lines = [f"C-MAPSS {args.subset}: {agg['test_engines']} test engines, one prediction each at its last "
             f"cycle; RUL cap {agg['rul_cap']:g} on training targets, truth not clipped; "
             f"window {agg['window']}, {agg['regimes']} operating regime(s) found on train.", "",
             "| model | test RMSE | NASA score |", "|---|---:|---:|"]
    if args.subset == "FD001":
        lines += [f"| {name} | {r:.2f} | {s:.1f} |" for name, r, s in ANCHORS]
    cell = "trend MLP" if rows[0]["encoder"] == "trend" else str(rows[0]["cell"]).upper()
    if rows[0]["members"] > 1:
        cell = f"{rows[0]['members']} averaged {cell}s"
    if args.pool == "attention":
        cell += " with attention pooling"
    if rows[0]["refit"]:
        cell += " (refit on all training engines)"
    lines.append(f"| **Vigil {cell}, mean of {len(rows)} seeds** | "
                 f"**{agg['rmse']:.2f} ± {agg['rmse_sd']:.2f}** | "
                 f"**{agg['score']:.1f} ± {agg['score_sd']:.1f}** |")
    lines += ["", "| seed | test RMSE | NASA score | val RMSE (all windows, capped) "
              "| epochs (best), per member | train s | ms/window (1 core, batch 1) | ms/window (batch 100) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['rmse']:.2f} | {r['score']:.1f} | {r['val_rmse']:.2f} | "
              f"{' / '.join(f'{e} ({b})' for e, b in zip(r['epochs'], r['best_epoch'], strict=True))} | "
              f"{r['train_seconds']:.0f} | {r['ms_per_window']:.3f} | "
              f"{r['ms_per_window_batch100']:.4f} |" for r in rows]
    lines += ["", f"Against the truth clipped at {agg['rul_cap']:g} (as some papers score; not comparable "
              f"with the table above): RMSE {agg['rmse_truth_clipped']:.2f} "
              f"± {agg['rmse_truth_clipped_sd']:.2f}, score {agg['score_truth_clipped']:.1f}."]
    lines += ["", f"params {agg['params']}, training {agg['train_seconds']:.0f} s per seed "
              f"({agg['train_seconds_total']:.0f} s in all), {agg['ms_per_window']:.3f} ms per window "
              "on one core."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train_/test_/RUL_FD00x.txt")
    p.add_argument("--subset", default="FD001", help="FD001, FD002, FD003 or FD004")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--encoder", choices=["trend", "recurrent"],
                   help="the preset's model: trend MLPs (default) or the LSTMs of sessions 9-14")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"],
                   help="recurrent cell; implies --encoder recurrent (default lstm)")
    p.add_argument("--pool", choices=["last", "attention"],
                   help="what the heads read of the cell (default: the preset's last state)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for kind in ("train", "test", "RUL"):
        f = args.data / f"{kind}_{args.subset}.txt"
        if not f.exists():
            print(f"cmapss bench: error: {f}: no such file", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for seed in range(args.seeds):
            rows.append(run_seed(args, seed, Path(tmp)))
            r = rows[-1]
            print(f"seed {seed}: test RMSE {r['rmse']:.2f}, score {r['score']:.1f}, "
                  f"{r['train_seconds']:.0f} s", file=sys.stderr, flush=True)
    rmse = [r["rmse"] for r in rows]
    score = [r["score"] for r in rows]
    agg: dict[str, Any] = {
        "subset": args.subset, "seeds": len(rows),
        "rmse": round(statistics.mean(rmse), 3),
        "rmse_sd": round(statistics.stdev(rmse), 3) if len(rows) > 1 else 0.0,
        "score": round(statistics.mean(score), 1),
        "score_sd": round(statistics.stdev(score), 1) if len(rows) > 1 else 0.0,
        "rmse_truth_clipped": round(statistics.mean(r["rmse_truth_clipped"] for r in rows), 3),
        "rmse_truth_clipped_sd": round(statistics.stdev(r["rmse_truth_clipped"] for r in rows), 3)
        if len(rows) > 1 else 0.0,
        "score_truth_clipped": round(statistics.mean(r["score_truth_clipped"] for r in rows), 1),
        "params": rows[0]["params"],
        "train_seconds": round(statistics.mean(r["train_seconds"] for r in rows), 1),
        "train_seconds_total": round(sum(r["train_seconds"] for r in rows), 1),
        # CPU seconds of this process and its member workers: what the run costs without other load.
        "train_cpu_seconds": round(statistics.mean(r["train_cpu_seconds"] for r in rows), 1),
        "ms_per_window": round(statistics.median(r["ms_per_window"] for r in rows), 4),
        "ms_per_window_batch100": round(statistics.median(r["ms_per_window_batch100"] for r in rows), 5),
        "rul_cap": rows[0]["rul_cap"], "window": rows[0]["window"], "regimes": rows[0]["regimes"],
        "test_engines": rows[0]["test_engines"],
        "per_seed": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(table(args, rows, agg))
    print(json.dumps(agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
