"""Training at scale: a long history streamed through the loader and trained on 1 and 2 processes.

    python bench/train_scale.py [--readings 50000000] [--assets 100] [--epochs 2]
                                [--windows-per-epoch 40000] [--stream-cells N] [--keep DIR]

1. `vigil-sim history --format parquet --partition asset` writes a synthetic plant holding
   --readings readings (5 channels at 60 s; --assets pumps over as many days as that takes).
2. Baseline: pyarrow reads the folder back batch by batch (the raw Parquet decode rate).
3. `python -m training fit --stream` on one process, then the same under
   `torchrun --nproc_per_node 2`, one torch thread per process, same seed and global batch.
   From each run: readings/s through the loader (its two streaming passes), windows/s trained
   (the epochs' step loops, from the summary's curve), and the peak RSS of its largest process
   (target: under 4 GiB).
Prints a table and, as its last line, one JSON object. `--readings 2000000` is a quick try.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, dump_json, free_port, machine_line

CHANNELS = 5             # what vigil-sim's pumps report
PERIOD_S = 60.0
RSS_TARGET_MIB = 4096.0
# Runs `cmd` and writes the largest peak RSS among its processes (RUSAGE_CHILDREN covers every
# descendant that was waited for: torchrun's workers too) to the file named first.
_MEASURE = ("import resource, subprocess, sys\n"
            "rc = subprocess.call(sys.argv[2:])\n"
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(rc)\n")


def measured(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd` to completion (output to `log`); (wall seconds, peak RSS of its largest process, MiB)."""
    peak = log.with_suffix(".peak")
    t0 = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.call([sys.executable, "-c", _MEASURE, str(peak), *cmd], stdout=out,
                             stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {rc}:\n{log.read_text()[-3000:]}")
    return wall, int(peak.read_text()) / 1024.0


def generate(out: Path, readings: int, assets: int, env: dict[str, str]) -> float:
    """The synthetic history (skipped when `out` holds one already); seconds it took."""
    if (out / "history").is_dir() and (out / "events.csv").exists():
        return 0.0
    # Pumps are down for a while after each failure: ask for ~8% more cells than readings wanted.
    days = 1.08 * readings / (assets * CHANNELS * 86400.0 / PERIOD_S)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "sim", "history", "--assets", str(assets), "--days", f"{days:.6f}",
                    "--seed", "7", "--format", "parquet", "--partition", "asset", "--no-progress",
                    "--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def raw_rate(folder: Path) -> tuple[int, float]:
    """(rows, seconds) for pyarrow to read every batch of the folder: the baseline decode rate."""
    import pyarrow.dataset as ds

    t0 = time.monotonic()
    rows = 0
    for batch in ds.dataset(folder, format="parquet", partitioning="hive").to_batches(batch_size=1 << 18):
        rows += batch.num_rows
    return rows, time.monotonic() - t0


def fit_run(procs: int, hist: Path, work: Path, args: argparse.Namespace, env: dict[str, str]
            ) -> dict[str, Any]:
    """One `fit --stream` on `procs` processes; its figures."""
    out = work / f"p{procs}"
    out.mkdir(exist_ok=True)
    fit_args = ["-m", "training", "fit", "--history", str(hist / "history"), "--events",
                str(hist / "events.csv"), "--stream", "--epochs", str(args.epochs), "--windows-per-epoch",
                str(args.windows_per_epoch), "--patience", str(args.epochs + 1), "--threads", "1",
                "--seed", "0", "--quiet", "--out", str(out / "model.pt")]
    if args.stream_cells:
        fit_args += ["--stream-cells", str(args.stream_cells)]
    if procs == 1:
        cmd = [sys.executable, *fit_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *fit_args]
    wall, peak = measured(cmd, out / "fit.log", env)
    summary = json.loads((out / "model.summary.json").read_text())
    loader = summary["stream"]
    windows = sum(r["windows"] for r in summary["curve"])
    train_s = sum(r["train_s"] for r in summary["curve"])
    loader_s = loader["pass1_s"] + loader["pass2_s"]
    return {"processes": procs, "wall_s": round(wall, 1), "peak_rss_mib": round(peak, 1),
            "loader_readings": loader["readings"], "loader_s": round(loader_s, 2),
            "loader_readings_per_s": round(loader["readings"] / loader_s),
            "windows": int(windows), "train_s": round(train_s, 2),
            "windows_per_s": round(windows / train_s, 1), "train_windows": summary["train_windows"],
            "version": summary["version"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", type=int, default=50_000_000, help="readings in the history (default 50M)")
    p.add_argument("--assets", type=int, default=100, help="pumps in the plant (default 100)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--windows-per-epoch", type=int, default=40_000)
    p.add_argument("--stream-cells", type=int,
                   help="fit --stream-cells: the validation cells calibration holds (default: fit's, 1M)")
    p.add_argument("--keep", type=Path, help="keep (or reuse) the generated history in this folder")
    args = p.parse_args()
    print(machine_line(), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    work = Path(tempfile.mkdtemp(prefix="vigil-train-scale-"))
    try:
        hist = args.keep or work / "hist"
        gen_s = generate(hist, args.readings, args.assets, env)
        rows, raw_s = raw_rate(hist / "history")
        if rows < args.readings:
            raise SystemExit(f"{hist}: {rows:,} readings, fewer than the {args.readings:,} asked for")
        print(f"history: {rows:,} readings, {args.assets} assets in {hist} (generated in {gen_s:.0f} s); "
              f"pyarrow reads it at {rows / raw_s:,.0f} readings/s", flush=True)
        runs = [fit_run(n, hist, work, args, env) for n in (1, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = runs
    ratio = two["windows_per_s"] / one["windows_per_s"]
    peak = max(one["peak_rss_mib"], two["peak_rss_mib"])
    table = (("loader, readings/s", "loader_readings_per_s"), ("windows trained/s", "windows_per_s"),
             ("peak RSS, largest process (MiB)", "peak_rss_mib"), ("wall time of the fit (s)", "wall_s"))
    print(f"\n{'':34}{'1 process':>14}{'2 processes':>14}")
    for label, key in table:
        print(f"{label:34}{one[key]:>14,}{two[key]:>14,}")
    print(f"\n2 processes train {ratio:.2f}x the windows/s of 1 (same seed and global batch); "
          f"loader {one['loader_readings_per_s'] / (rows / raw_s):.2f}x pyarrow's raw read; "
          f"peak RSS {peak:,.0f} MiB (target < {RSS_TARGET_MIB:,.0f}: "
          f"{'met' if peak < RSS_TARGET_MIB else 'NOT met'})")
    print(dump_json({"bench": "train_scale", "readings": rows, "assets": args.assets,
                     "generate_s": round(gen_s, 1), "raw_readings_per_s": round(rows / raw_s), "runs": runs,
                     "ratio_2_vs_1": round(ratio, 3), "peak_rss_mib": peak, "rss_target_mib": RSS_TARGET_MIB,
                     "rss_met": peak < RSS_TARGET_MIB}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
