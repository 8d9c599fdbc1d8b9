"""K-fold cross-validation on the C-MAPSS training engines only: how choices are made without the test set.

    python bench/cmapss_cv.py --data ../shared/data/cmapss --subset FD001 [--folds 5] [--set conv=32 ...]

The training file's engines are shuffled (fixed seed) into K folds. For each fold, the preset
(`training.fit.cmapss_options`, overridden by `--set key=value`) is fitted with that fold as
its validation engines (they choose the epoch) and the others as training engines; with
`--nested` the fold is taken out of the file altogether and the fit draws its own validation
engines from the rest, as the benchmark does from the whole file (needed to judge `refit`,
which trains on its validation engines too). Each
held-out engine is then cut at `--cuts` random cycles, drawn like the test file (at least
31 cycles observed, true RUL 7-145), and predicted from the window ending at the cut through
the agent's runtime on the exported file: RMSE and NASA score against the uncapped truth,
the test protocol on engines the model never trained on. The test file is never read.
`--save DIR` keeps each fold's cut predictions for `bench/cmapss_diagnose.py`.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import ast
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
from training.cmapss import load_cmapss
from training.evaluate import nasa_score
from training.fit import cmapss_options, fit

MIN_OBSERVED, MIN_RUL, MAX_RUL = 31, 7, 145  # the test file's ranges (FD001 README)


def cuts(grids: dict[str, np.ndarray], names: list[str], n: int, window: int, seed: int, back: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Windows ending at `n` random cuts of each named engine (padded with its first cycle), true RULs.

    `back` k > 0: the windows end k cycles before the same cuts (the truths stay the cuts').
    """
    rng = np.random.default_rng(seed)
    xs, truth = [], []
    for name in names:
        g = grids[name]
        life = len(g)  # the engine fails at its last cycle
        lo, hi = max(MIN_OBSERVED, life - MAX_RUL), life - MIN_RUL
        for c in rng.integers(lo, hi + 1, size=n):  # c cycles observed, RUL life - c
            end = c - back
            w = g[max(0, end - window):end]
            if len(w) < window:
                w = np.concatenate([np.repeat(w[:1], window - len(w), axis=0), w])
            xs.append(w)
            truth.append(life - c)
    return np.stack(xs), np.asarray(truth, dtype=np.float64)


def without(path: Path, engines: list[str], out: Path) -> Path:
    """A copy of a C-MAPSS file without the named engines' rows."""
    units = {int(e.rsplit("_", 1)[1]) for e in engines}
    with path.open() as src, out.open("w") as dst:
        dst.writelines(line for line in src if int(line.split()[0]) not in units)
    return out


def member_ruls(rt: Any, x: np.ndarray) -> np.ndarray:
    """Each member's RUL for normalised windows x [K, N] (one row for a single network): lets
    any subset of an ensemble's members be scored again without training."""
    import torch

    module = rt._module  # the scripted model file
    nets = [getattr(module.members, str(i)) for i in range(int(module.n_members))] \
        if hasattr(module, "members") else [module]
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return np.stack([net(xt)["rul"].numpy() for net in nets])


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train_FD00x.txt")
    p.add_argument("--subset", default="FD001", help="FD001, FD002, FD003 or FD004")
    p.add_argument("--folds", type=int, default=5, help="folds of the training engines (default 5)")
    p.add_argument("--only", type=int, nargs="*", help="run only these folds (0-based)")
    p.add_argument("--cuts", type=int, default=20, help="random cuts per held-out engine")
    p.add_argument("--seed", type=int, default=0, help="model seed")
    p.add_argument("--fold-seed", type=int, default=1234, help="seed of the fold assignment and cuts")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--nested", action="store_true",
                   help="hide the fold from the fit entirely; it splits off its own validation engines")
    p.add_argument("--average", type=int, default=1,
                   help="also score the mean of the last K windows' RULs, each less its age (K > 1)")
    p.add_argument("--save", type=Path,
                   help="folder to write each fold's cut predictions and truths to (fold<k>.npz)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="preset override key=value")
    args = p.parse_args(argv)
    train = args.data / f"train_{args.subset}.txt"
    overrides = parse_sets(args.sets)
    probe = cmapss_options(train, Path("unused"), **overrides)
    data = load_cmapss(train, channels=probe.channels)
    grids = {s.asset: s.grid for s in data.history.assets}
    engines = sorted(grids)
    order = [engines[i] for i in np.random.default_rng(args.fold_seed).permutation(len(engines))]
    folds = [order[k::args.folds] for k in range(args.folds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.only if args.only is not None else range(args.folds):
            out = Path(tmp) / f"fold{k}.pt"
            if args.nested:
                history = without(train, folds[k], Path(tmp) / f"train_fold{k}.txt")
                opts = cmapss_options(history, out, seed=args.seed, threads=args.threads, progress=False,
                                      **overrides)
            else:
                opts = cmapss_options(train, out, seed=args.seed, threads=args.threads, progress=False,
                                      val_assets=tuple(folds[k]), **overrides)
            t0 = time.monotonic()
            spec, summary = fit(opts)
            rt = load_model(out, threads=1)
            x, truth = cuts(grids, folds[k], args.cuts, spec.window, args.fold_seed + k)
            pred = rt.infer(rt.spec.normalise(x)).rul
            assert pred is not None
            d = pred.astype(np.float64) - truth
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                np.savez(args.save / f"fold{k}.npz", pred=pred, truth=truth,
                         life=np.repeat([len(grids[e]) for e in folds[k]], args.cuts),
                         members=member_ruls(rt, rt.spec.normalise(x)))
            extra: dict[str, float] = {}
            if args.average > 1:
                # Each earlier window's RUL, less the cycles since it ended, predicts the cut's.
                # On the plateau (near the cap) an old window says only "at least", so the
                # second form keeps such a prediction as it is instead of ageing it.
                olds, kept = [pred.astype(np.float64)], [pred.astype(np.float64)]
                for back in range(1, args.average):
                    xb, _ = cuts(grids, folds[k], args.cuts, spec.window, args.fold_seed + k, back)
                    rb = rt.infer(rt.spec.normalise(xb)).rul
                    assert rb is not None
                    rb = rb.astype(np.float64)
                    olds.append(rb - back)
                    kept.append(np.where(rb >= 0.95 * opts.rul_cap, rb, rb - back))
                avg, avg_kept = np.mean(olds, axis=0), np.mean(kept, axis=0)
                extra = {"rmse_avg": float(np.sqrt(np.mean((avg - truth) ** 2))),
                         "score_avg_per_100": nasa_score(avg, truth) * 100.0 / len(truth),
                         "rmse_avg_kept": float(np.sqrt(np.mean((avg_kept - truth) ** 2))),
                         "score_avg_kept_per_100": nasa_score(avg_kept, truth) * 100.0 / len(truth)}
            rows.append({"fold": k, **extra, "rmse": float(np.sqrt(np.mean(d**2))),
                         "score_per_100": nasa_score(pred, truth) * 100.0 / len(truth),
                         "bias": float(np.mean(d)), "best_epoch": summary["best_epoch"],
                         "seconds": round(time.monotonic() - t0, 1), "params": summary["params"]})
            r = rows[-1]
            if extra:
                print(f"fold {k}: mean of the last {args.average} windows: RMSE {extra['rmse_avg']:.2f}, "
                      f"score/100 {extra['score_avg_per_100']:.0f}; plateau kept: RMSE "
                      f"{extra['rmse_avg_kept']:.2f}, score/100 {extra['score_avg_kept_per_100']:.0f}",
                      file=sys.stderr, flush=True)
            print(f"fold {k}: RMSE {r['rmse']:.2f}, score/100 {r['score_per_100']:.0f}, "
                  f"bias {r['bias']:+.1f}, "
                  f"best epoch {r['best_epoch']}, {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    # Pooled over all cuts of all folds: each fold has the same number of cuts.
    rmse = float(np.sqrt(np.mean([r["rmse"] ** 2 for r in rows])))
    agg = {"subset": args.subset, "overrides": overrides, "nested": args.nested, "folds": len(rows),
           "rmse": round(rmse, 3),
           "rmse_folds": [round(r["rmse"], 2) for r in rows],
           "score_per_100": round(statistics.mean(r["score_per_100"] for r in rows), 1),
           "bias": round(statistics.mean(r["bias"] for r in rows), 2), "params": rows[0]["params"],
           "seconds": round(sum(r["seconds"] for r in rows), 1)}
    if args.average > 1:
        agg["average"] = args.average
        for key in ("avg", "avg_kept"):
            agg[f"rmse_{key}"] = round(float(np.sqrt(np.mean([r[f"rmse_{key}"] ** 2 for r in rows]))), 3)
            agg[f"score_{key}_per_100"] = round(statistics.mean(r[f"score_{key}_per_100"] for r in rows), 1)
    print(json.dumps(agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
