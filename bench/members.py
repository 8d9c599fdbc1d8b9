"""Ensemble members trained side by side in worker processes against one after the other.

    python bench/members.py --data ../shared/data/cmapss [--subset FD001] [--members 3]
                            [--threads 2] [--epochs 8] [--windows-per-epoch 100000]

Fits the C-MAPSS LSTM preset (`encoder="recurrent"`, its refit included) on `train_FD00x.txt`
with a short fixed schedule (no early stop: every member runs `--epochs`, then as many again in
its refit) twice, same
seed: the baseline trains the members one after the other in this process with `--threads`
torch threads (`member_processes=1`, how fit ran before), then the default, which trains them
in min(members, threads) worker processes of one thread each. Prints both runs' wall and CPU
seconds and the speed-up; the last line is one JSON object. The test file is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cpu_seconds_with_children, machine_line
from training.fit import cmapss_options, fit


def run(args: argparse.Namespace, out: Path, processes: int | None) -> dict[str, Any]:
    """One fit: its wall and CPU seconds and the epochs its members ran (refits included)."""
    # The LSTM preset (sessions 9-14): its members take minutes each, which is what scheduling
    # them side by side is for; the trend preset's train in seconds.
    opts = cmapss_options(args.data / f"train_{args.subset}.txt", out, encoder="recurrent",
                          members=args.members, threads=args.threads, epochs=args.epochs, patience=args.epochs,
                          windows_per_epoch=args.windows_per_epoch, progress=False,
                          member_processes=processes)
    t0, c0 = time.monotonic(), cpu_seconds_with_children()
    _, summary = fit(opts)
    wall, cpu = time.monotonic() - t0, cpu_seconds_with_children() - c0
    epochs = sum(m["epochs_run"] for m in summary["members"]) + sum(summary["refit"]["epochs_run"])
    return {"processes": summary["member_processes"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "member_epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train_FD00x.txt")
    p.add_argument("--subset", default="FD001")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the run (cores to use)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per member, and as many in its refit")
    p.add_argument("--windows-per-epoch", type=int, default=100_000,
                   help="windows an epoch draws at most (FD001's training file has about 20,000)")
    args = p.parse_args(argv)
    history = args.data / f"train_{args.subset}.txt"
    if not history.exists():
        print(f"members bench: error: {history}: no such file", file=sys.stderr)
        return 1
    machine = machine_line()
    with tempfile.TemporaryDirectory() as tmp:
        base = run(args, Path(tmp) / "one.pt", 1)
        side = run(args, Path(tmp) / "side.pt", None)
    ratio = base["wall_s"] / side["wall_s"]
    print(machine)
    print(f"C-MAPSS {args.subset} preset, {args.members} members x ({args.epochs} + {args.epochs} refit) "
          f"epochs of {args.windows_per_epoch} windows, {args.threads} threads")
    print("| members trained | processes | member epochs | wall s | CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("one after the other (baseline)", base), ("side by side", side)):
        print(f"| {name} | {r['processes']} | {r['member_epochs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    print(f"speed-up: {ratio:.2f}x")
    print(json.dumps({"subset": args.subset, "members": args.members, "threads": args.threads,
                      "baseline": base, "side_by_side": side, "speedup": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
