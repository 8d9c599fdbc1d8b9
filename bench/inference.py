"""The agent's model runtime against the raw model call, at batch 1, 8, 64 and 256, both runtimes.

    .venv/bin/python bench/inference.py [--seconds 0.5]

The reference model (2-layer, 64-unit LSTM over 30 steps of 14 channels) is built and
exported to TorchScript and ONNX. "raw" is the bare call: the scripted module on a tensor
under inference_mode, or the ONNX Runtime session on an array. "agent" is `Runtime.infer`:
the same call plus what the agent needs around it (contiguous float32 input, outputs as
numpy arrays in `Outputs`). One thread, pinned to one core where allowed; raw and agent are
timed in alternating runs and each figure is the best of five, since the machine may be
shared. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h

BATCHES = (1, 8, 64, 256)


def calls_for(call: Callable[[], object], seconds: float) -> int:
    """How many calls take about `seconds`."""
    call()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            call()
        took = time.perf_counter() - t
        if took > seconds / 4:
            return max(1, int(n * seconds / took))
        n *= 2


def rates(raw: Callable[[], object], agent: Callable[[], object], batch: int, seconds: float,
          rounds: int = 5) -> tuple[float, float]:
    """Windows per second of each, the best of `rounds` alternating runs: on a shared machine
    both see the same interference, and the best run is the one least disturbed."""
    n_raw, n_agent = calls_for(raw, seconds), calls_for(agent, seconds)
    best = [0.0, 0.0]
    for _ in range(rounds):
        for k, (call, n) in enumerate(((raw, n_raw), (agent, n_agent))):
            t = time.perf_counter()
            for _ in range(n):
                call()
            best[k] = max(best[k], n * batch / (time.perf_counter() - t))
    return best[0], best[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0.3, help="time per run (5 alternating runs each)")
    args = ap.parse_args()
    if h.CPU_AGENT in h.cpus():
        os.sched_setaffinity(0, {h.CPU_AGENT})
    import onnxruntime as ort
    import torch

    from agent.runtime import load_model
    from agent.runtime_onnx import load_onnx

    torch.set_num_threads(1)
    print(f"machine: {h.machine_line()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as d:
        models = h.build_models(Path(d))
        ts_rt = load_model(models.torchscript, threads=1)
        ox_rt = load_onnx(models.onnx, threads=1)
        module = ts_rt._module
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(models.onnx), opts, providers=["CPUExecutionProvider"])
        results: dict[str, dict[int, dict[str, float]]] = {"torchscript": {}, "onnx": {}}
        rng = np.random.default_rng(0)
        for b in BATCHES:
            x = rng.normal(size=(b, h.WINDOW, len(h.CHANNELS))).astype(np.float32)
            xt = torch.from_numpy(x)

            def raw_ts(xt: torch.Tensor = xt) -> object:
                with torch.inference_mode():
                    return module(xt)  # type: ignore[operator]

            def raw_ox(x: np.ndarray = x) -> object:
                return session.run(None, {"x": x})

            for name, raw, agent in (("torchscript", raw_ts, lambda x=x: ts_rt.infer(x)),
                                     ("onnx", raw_ox, lambda x=x: ox_rt.infer(x))):
                r, a = rates(raw, agent, b, args.seconds)
                results[name][b] = {"raw": r, "agent": a, "ratio": a / r}
                print(f"{name:11s} batch {b:4d}: raw {r:9,.0f}  agent {a:9,.0f} windows/s", file=sys.stderr)
    rows = [("runtime", "batch", "raw windows/s", "agent windows/s", "agent / raw")]
    for name, per in results.items():
        for b, m in per.items():
            rows.append((name, str(b), f"{m['raw']:,.0f}", f"{m['agent']:,.0f}", f"{m['ratio']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    summary = {f"{name}_b{b}_{k}": round(v, 3 if k == "ratio" else 0)
               for name, per in results.items() for b, m in per.items() for k, v in m.items()}
    ratios = [m["ratio"] for per in results.values() for m in per.values()]
    summary["min_agent_over_raw"] = round(min(ratios), 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
