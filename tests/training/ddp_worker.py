"""One process of a 2-process DDP run, started by torchrun from tests/training/test_ddp.py.

    torchrun --nproc_per_node 2 tests/training/ddp_worker.py OUT HISTORY EVENTS

Trains the shared tiny problem under DDP (a whole run; a run stopped after one epoch and
resumed), keeps each process's drawn windows and final weights in OUT/results/rank{r}.pt,
then runs `vigil-train fit --stream` (the CLI, inside the same process group: one cache
shared by the two processes) with its outputs in OUT/rank{r}/, so anything another rank
than 0 wrote would show in its own folder.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tests.training.tiny import run_to_failure
from training import distributed as dist
from training.cli import main as cli_main
from training.labels import Inputs
from training.model import Forecaster, ModelConfig
from training.train import TrainConfig, train

# 4 shards: runs on 1, 2 or 4 processes draw the same global batches. Loads of about 150
# windows (2 or 3 assets) make the shards load, mix and drop groups within an epoch.
CFG = TrainConfig(epochs=3, batch_size=64, lr=5e-3, patience=10, seed=3, progress=False, input_noise=0.05,
                  ema=0.9, shards=4, shard_windows=150)
RUL_CAP = 30.0
LONELY = replace(CFG, epochs=1, shards=2)


def ddp_data() -> tuple[Inputs, Inputs]:
    """Twelve run-to-failure assets of unequal lives, two drifting channels; 9 train, 3 validation."""
    return run_to_failure(12, 50, 5, 1, lambda a: a % 4 != 3)


def one_asset(data: Inputs) -> Inputs:
    """The windows of the first asset alone."""
    return Inputs(data.ws.subset(data.ws.asset == data.ws.asset[0]), data.z)


def new_model() -> Forecaster:
    """Forecast, failure and RUL heads (the RUL head's empty hidden layer is a frozen, unused weight)."""
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=2, horizon=2, hidden=8, rul_head=True, rul_cap=RUL_CAP))


def new_trend(window: int) -> Forecaster:
    """The same heads on the trend encoder, whose feature scale is fitted before the first step."""
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=2, horizon=2, hidden=8, rul_head=True, rul_cap=RUL_CAP,
                                  encoder="trend", window=window))


def weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def main(out: Path, history: str, events: str) -> int:
    torch.set_num_threads(1)
    with dist.session() as ctx:
        tr, va = ddp_data()
        drawn: list[tuple[int, int, np.ndarray]] = []
        full = new_model()
        run = train(full, tr, va, CFG, RUL_CAP, ctx=ctx,
                    on_batch=lambda epoch, step, ids: drawn.append((epoch, step, ids.copy())))
        shared = out / "shared" / "run.ckpt"
        part = train(new_model(), tr, va, replace(CFG, stop_after=1), RUL_CAP, checkpoint=shared, ctx=ctx)
        if ctx.is_writer:  # kept for the test to resume on one process
            shutil.copy(shared, shared.with_name("after1.ckpt"))
        dist.barrier(ctx)
        resumed = new_model()
        rest = train(resumed, tr, va, CFG, RUL_CAP, checkpoint=shared, resume=True, ctx=ctx)
        # One training asset, two shards: rank 1 draws nothing, yet must step with rank 0.
        lonely = new_model()
        train(lonely, one_asset(tr), va, LONELY, RUL_CAP, ctx=ctx)
        trend = new_trend(tr.ws.window)
        train(trend, tr, va, CFG, RUL_CAP, ctx=ctx)
        results = out / "results"
        results.mkdir(parents=True, exist_ok=True)
        torch.save({"full": weights(full), "resumed": weights(resumed), "curve": run.curve,
                    "rest_curve": rest.curve, "lonely": weights(lonely), "part_finished": part.finished,
                    "trend": weights(trend),
                    "drawn": drawn},
                   results / f"rank{ctx.rank}.pt")
        mine = out / f"rank{ctx.rank}"
        return cli_main([
            "fit", "--history", history, "--events", events, "--window", "12", "--horizon", "2",
            "--fail-horizon", "720", "--hidden", "8", "--epochs", "2", "--windows-per-epoch", "3000",
            "--threads", "1", "--shards", "2", "--stream", "--quiet", "--out", str(mine / "m.pt"),
            "--checkpoint", str(mine / "c.ckpt"), "--report", str(mine / "report")])


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
