"""Training on several processes with PyTorch's own engine: torchrun starts them, DDP syncs gradients.

`session()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR/PORT) and joins the process group: NCCL when every local rank has a GPU of its own,
gloo on the CPU otherwise. Without WORLD_SIZE, or with one process, it initialises nothing and
training runs as a plain process. The helpers below are no-ops in a single process, so the
training loop reads the same either way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as tdist
from torch import nn

# Ranks other than 0 wait while rank 0 calibrates, exports and writes the report: allow for that.
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, the model file, the summary and the report."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def from_env(env: Mapping[str, str] | None = None, backend: str = "auto") -> tuple[Dist, str]:
    """This process's Dist and process-group backend, from torchrun's variables (none: one process)."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE", 1)
    rank = _int(env, "RANK", 0)
    local_rank = _int(env, "LOCAL_RANK", 0)
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of the run")
    if world == 1:
        return SINGLE, ""
    if backend == "auto":
        # NCCL needs one GPU per process on this machine; otherwise every process trains on the CPU.
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {backend!r}")
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Dist(rank, world, local_rank, device), backend


@contextmanager
def session(env: Mapping[str, str] | None = None, backend: str = "auto") -> Iterator[Dist]:
    """Join the process group torchrun describes for the duration of the block (and leave it)."""
    ctx, chosen = from_env(env, backend)
    if not ctx.active:
        yield ctx
        return
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    # Joining twice would fail: a caller (a test, a notebook) may have set the group up already.
    owned = not tdist.is_initialized()
    if owned:
        tdist.init_process_group(chosen, rank=ctx.rank, world_size=ctx.world, timeout=TIMEOUT)
    try:
        yield ctx
        if owned:  # every process has finished every collective before any leaves
            tdist.barrier()
    finally:
        if owned and tdist.is_initialized():
            tdist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End a process that took part in a process group: flush, then exit without Python's shutdown.

    A gloo worker thread drops a finished collective (and, through a barrier, the collectives
    before it) a moment after the caller has its result; dropping a tensor made in Python
    takes the GIL, and if Python is shutting down by then the thread is torn down inside that
    destructor and the process aborts ("terminate called without an active exception"; 5
    launches in 20 of a short DDP run, and still 1 in about 100 with a closing barrier). The
    group cannot be shut down first: once DDP has used it, torch keeps it and its threads
    alive past destroy_process_group. Every file is written and closed by now, so only the
    standard streams and log handlers need flushing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_sum(ctx: Dist, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Element-wise sum over all processes (float64; counts up to 2^53 stay exact)."""
    arr = np.asarray(values, dtype=np.float64)
    if not ctx.active:
        return arr
    t = torch.from_numpy(arr.copy()).to(ctx.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    out: npt.NDArray[np.float64] = t.cpu().numpy()
    return out


def barrier(ctx: Dist) -> None:
    if ctx.active:
        tdist.barrier()


def broadcast(ctx: Dist, obj: Any) -> Any:
    """Rank 0's `obj` (any picklable object) on every process; the others pass None."""
    if not ctx.active:
        return obj
    box: list[Any] = [obj]
    tdist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def wrap(ctx: Dist, module: nn.Module) -> nn.Module:
    """`module` under DistributedDataParallel when there are several processes, else itself.

    Heads that are switched off keep empty (zero-element) weights that forward never uses;
    they are frozen so that DDP does not wait for their gradients.
    """
    if not ctx.active:
        return module
    for p in module.parameters():
        if p.numel() == 0:
            p.requires_grad_(False)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # The only buffer (the calibration temperature) does not change while training: no
    # need to broadcast buffers before every forward, one collective less per step.
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
