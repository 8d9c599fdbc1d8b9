r"""One of two processes that train a tiny LSTM under DDP and leave as `vigil-train fit` does.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p \
        python tests/training/ddp_exit_worker.py [--shutdown]

Started by tests/training/test_ddp.py, which asserts that both exit 0: the exit right after
DDP's last collectives is where a gloo worker thread can abort the process. `--shutdown`
exits through Python's shutdown instead of `training.distributed.leave`, which reproduces the
abort by hand (about one launch in four).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from training import distributed as dist


def train(ctx: dist.Dist, steps: int) -> None:
    lstm = nn.LSTM(4, 8, batch_first=True)
    ddp = dist.wrap(ctx, lstm)
    opt = torch.optim.Adam(lstm.parameters())
    for _ in range(steps):
        out, _ = ddp(torch.randn(16, 5, 4))
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        dist.all_reduce_sum(ctx, np.arange(4.0))


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with dist.session() as session_ctx:
        for _ in range(3):
            train(session_ctx, 100)
    if "--shutdown" not in sys.argv:
        dist.leave(0)
