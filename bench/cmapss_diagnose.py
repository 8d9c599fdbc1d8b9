"""Where the cross-validated RUL error of a C-MAPSS model comes from, and what no retraining can fix.

    python bench/cmapss_cv.py --data ../shared/data/cmapss --nested --seed 0 --save runs/s0
    python bench/cmapss_cv.py --data ../shared/data/cmapss --nested --seed 1 --save runs/s1
    python bench/cmapss_diagnose.py runs/s0 runs/s1

For each run (a folder of `fold<k>.npz` written by `cmapss_cv.py --save`): RMSE and squared-error
share by true RUL and by engine life, the calibration of the predictions (mean truth per
prediction bin), and three post-hoc corrections of the predictions, each fitted on the other
folds and applied to the held-out one (a shift, a line, isotonic regression), against the raw
predictions of the same cuts. With several runs on the same folds and cuts (other seeds or
variants): the correlation of their errors and the RMSE of their average. Runs of ensembles
keep each member's RUL: `--members 0,2` scores the mean of those members instead of the shipped
prediction (what a smaller ensemble would have scored on the same cuts, without training it).
The test file is never read. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.evaluate import nasa_score

Array = npt.NDArray[np.float64]
TRUTH_BANDS = ((0, 30), (30, 60), (60, 90), (90, 125), (125, 146))
LIFE_BANDS = ((0, 170), (170, 200), (200, 230), (230, 1000))


def load_run(folder: Path, members: list[int] | None = None) -> list[dict[str, Array]]:
    """The folds of one run, in fold order; with `members`, each cut's prediction is the mean
    of those members' RULs."""
    files = sorted(folder.glob("fold*.npz"), key=lambda f: int(f.stem[4:]))
    if not files:
        raise SystemExit(f"{folder}: no fold<k>.npz (write them with bench/cmapss_cv.py --save)")
    folds = []
    for z in map(np.load, files):
        fold = {k: np.asarray(z[k], dtype=np.float64) for k in ("pred", "truth", "life")}
        if members is not None:
            held = z["members"] if "members" in z.files else np.empty((0, 0))
            if not all(0 <= m < len(held) for m in members):
                raise SystemExit(f"{folder}: members {members} asked, the run kept {len(held)}")
            fold["pred"] = np.asarray(held[members], dtype=np.float64).mean(axis=0)
        folds.append(fold)
    return folds


def rmse(pred: Array, truth: Array) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def pooled(per_fold: list[tuple[Array, Array]]) -> tuple[float, float]:
    """Pooled RMSE and mean NASA score per 100 cuts over folds of equal size."""
    r = float(np.sqrt(np.mean([rmse(p, t) ** 2 for p, t in per_fold])))
    s = float(np.mean([nasa_score(p, t) * 100.0 / len(t) for p, t in per_fold]))
    return r, s


def isotonic(x: Array, y: Array) -> tuple[Array, Array, Array]:
    """The non-decreasing least-squares fit of y on x (pool adjacent violators): per block of
    points in x order, its mean x, its fitted value and its size."""
    order = np.argsort(x, kind="stable")
    blocks: list[list[float]] = []  # [sum of y, count, sum of x]
    for xi, yi in zip(x[order], y[order], strict=True):
        blocks.append([yi, 1.0, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last, strict=True)]
    return (np.array([b[2] / b[1] for b in blocks]), np.array([b[0] / b[1] for b in blocks]),
            np.array([b[1] for b in blocks]))


def corrections(folds: list[dict[str, Array]]) -> dict[str, tuple[float, float]]:
    """Raw and cross-fitted corrected predictions: pooled RMSE and score per 100 cuts.

    A run stopped after its first fold has no other folds to fit a correction on: raw only.
    """
    if len(folds) < 2:
        return {"raw": pooled([(f["pred"], f["truth"]) for f in folds])}
    out: dict[str, list[tuple[Array, Array]]] = {"raw": [], "shift": [], "line": [], "isotonic": []}
    for k, f in enumerate(folds):
        px = np.concatenate([g["pred"] for j, g in enumerate(folds) if j != k])
        ty = np.concatenate([g["truth"] for j, g in enumerate(folds) if j != k])
        p, t = f["pred"], f["truth"]
        slope, icpt = np.polyfit(px, ty, 1)
        kx, ky, _ = isotonic(px, ty)
        out["raw"].append((p, t))
        out["shift"].append((p + float(np.mean(ty - px)), t))
        out["line"].append((icpt + slope * p, t))
        out["isotonic"].append((np.interp(p, kx, ky), t))
    return {name: pooled(pairs) for name, pairs in out.items()}


Band = dict[str, float | int | str]


def bands(pred: Array, truth: Array, key: Array, edges: tuple[tuple[int, int], ...]) -> list[Band]:
    """Error by band of `key` (true RUL or engine life): count, RMSE, bias, share of squared error."""
    sse = float(np.sum((pred - truth) ** 2))
    rows: list[Band] = []
    for lo, hi in edges:
        m = (key > lo) & (key <= hi)
        if m.any():
            d = pred[m] - truth[m]
            rows.append({"band": f"{lo}-{hi}", "n": int(m.sum()), "rmse": round(rmse(pred[m], truth[m]), 2),
                         "bias": round(float(d.mean()), 2),
                         "sse_share": round(float(np.sum(d**2)) / sse, 3) if sse else 0.0})
    return rows


def calibration(pred: Array, truth: Array, width: float = 10.0) -> list[tuple[float, float, int]]:
    """Mean prediction, mean truth and count per prediction bin of `width` cycles (bins of 20+ cuts)."""
    out = []
    for lo in np.arange(0.0, float(pred.max()) + width, width):
        m = (pred >= lo) & (pred < lo + width)
        if m.sum() >= 20:
            out.append((round(float(pred[m].mean()), 1), round(float(truth[m].mean()), 1), int(m.sum())))
    return out


def same_cuts(runs: list[list[dict[str, Array]]]) -> bool:
    """Whether the runs hold the same folds with the same truths, cut for cut."""
    first = runs[0]
    return all(len(r) == len(first)
               and all(np.array_equal(f["truth"], g["truth"]) for f, g in zip(first, r, strict=True))
               for r in runs[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="folders written by cmapss_cv.py --save")
    p.add_argument("--members", type=lambda s: [int(m) for m in s.split(",")],
                   help="comma-separated members (0-based) whose mean RUL stands for each run's prediction")
    args = p.parse_args(argv)
    runs = {str(r): load_run(r, args.members) for r in args.runs}
    report: dict[str, object] = {}
    for name, folds in runs.items():
        pred = np.concatenate([f["pred"] for f in folds])
        truth = np.concatenate([f["truth"] for f in folds])
        life = np.concatenate([f["life"] for f in folds])
        fixes = corrections(folds)
        print(f"{name}: {len(folds)} folds, {len(pred)} cuts")
        for label, rows in (("true RUL", bands(pred, truth, truth, TRUTH_BANDS)),
                            ("engine life", bands(pred, truth, life, LIFE_BANDS))):
            for r in rows:
                print(f"  {label} {r['band']:>8}: n {r['n']:4d}  RMSE {r['rmse']:5.1f}"
                      f"  bias {r['bias']:+5.1f}  share of squared error {r['sse_share']:.2f}")
        cal = calibration(pred, truth)
        print("  calibration (mean prediction -> mean truth):",
              ", ".join(f"{a:.0f}->{b:.0f}" for a, b, _ in cal))
        for fix, (err, score) in fixes.items():
            how = "as predicted" if fix == "raw" else "fitted on the other folds"
            print(f"  {fix:>8} ({how}): RMSE {err:.2f}, score/100 {score:.0f}")
        report[name] = {"rmse": round(fixes["raw"][0], 3), "score_per_100": round(fixes["raw"][1], 1),
                        "corrected_rmse": {k: round(v[0], 3) for k, v in fixes.items() if k != "raw"},
                        "life_error_corr": round(float(np.corrcoef(pred - truth, life)[0, 1]), 3),
                        "truth_bands": bands(pred, truth, truth, TRUTH_BANDS)}
    if len(runs) > 1:
        lists = list(runs.values())
        if not same_cuts(lists):
            raise SystemExit("the runs were not made on the same folds and cuts "
                             "(same --fold-seed and --cuts)")
        errs = np.array([np.concatenate([f["pred"] - f["truth"] for f in fs]) for fs in lists])
        corr = np.corrcoef(errs)[np.triu_indices(len(lists), 1)]
        mean = pooled([(np.mean([fs[k]["pred"] for fs in lists], axis=0), lists[0][k]["truth"])
                       for k in range(len(lists[0]))])
        print(f"errors of the {len(lists)} runs correlate {corr.min():.3f}-{corr.max():.3f}; "
              f"their average: RMSE {mean[0]:.2f}, score/100 {mean[1]:.0f}")
        report["average"] = {"error_corr_min": round(float(corr.min()), 3), "rmse": round(mean[0], 3),
                             "score_per_100": round(mean[1], 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
