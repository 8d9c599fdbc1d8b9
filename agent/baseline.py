"""Per-asset baselines: each asset's inputs measured against its own normal.

Machines of one kind still differ: a server's CPU idles at 5 % or at 60 %, one pump's bearing
runs 8 degC warmer than its neighbour's. With per-asset baselines every channel of an asset
enters the model as (x - centre) / scale, the asset's own median and robust spread, so one
model serves machines whose units or operating levels differ. Training computes a baseline
with `robust_baseline`; the agent learns one for an asset the model file does not know with a
`BaselineLearner` over that asset's first cells, through the very same function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from agent.spec import Baseline, BaselinePolicy

FloatArray = npt.NDArray[np.float64]
# The interquartile range of a normal distribution is 1.349 standard deviations.
IQR_SIGMAS = 1.349
# A spread is never below this share of the standard deviation (see `robust_spread`).
STD_SHARE = 0.1


def robust_spread(x: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Per column of x [N, C], the interquartile range in standard deviations, but at least a
    tenth of the standard deviation: a channel that mostly sits still and sometimes jumps (a
    counter, a spiky or quantised signal, whose interquartile range is about 0) is measured by
    its jumps, so one of them reads as a few spreads rather than as thousands."""
    q1, q3 = np.quantile(x, [0.25, 0.75], axis=0)
    return np.asarray(np.maximum((q3 - q1) / IQR_SIGMAS, STD_SHARE * np.std(x, axis=0)), dtype=np.float64)


def robust_baseline(rows: npt.NDArray[np.floating[Any]], policy: BaselinePolicy) -> Baseline:
    """The baseline of whole rows [N, C]: per baselined channel its median and its spread.

    The spread is `robust_spread`, never below the policy's floor, so a channel that never
    moved cannot turn a later small step into an infinite z.
    Channels the policy does not baseline pass through (centre 0, scale 1).
    """
    n_ch = len(policy.floor)
    center, scale = np.zeros(n_ch), np.ones(n_ch)
    cols = list(policy.channels)
    x = np.asarray(rows, dtype=np.float64)[:, cols]
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) == 0:
        raise ValueError("a baseline needs at least one whole row")
    spread = robust_spread(x)
    center[cols] = np.median(x, axis=0)
    scale[cols] = np.maximum(spread, np.asarray(policy.floor)[cols])
    return Baseline(tuple(map(float, center)), tuple(map(float, scale)))


def apply_baselines(x: npt.NDArray[np.floating[Any]], center: FloatArray, scale: FloatArray) -> FloatArray:
    """Raw values [..., C] against baselines broadcast to them (centre and scale [..., 1 or more, C])."""
    return np.asarray((x - center) / scale, dtype=np.float64)


class BaselineLearner:
    """An asset's baseline, learnt from its first `policy.cells` whole cells.

    Fed the windows the agent closes for the asset, in event order; each cell counts once,
    however many windows cover it. `baseline` is None until enough cells were seen; then the
    buffer is dropped and only the baseline is kept. The buffer holds float32 differences from
    the first cell (kept in float64): half the memory of float64, and a counter near 1e8 that
    moves by units keeps its units.
    """

    __slots__ = ("baseline", "last_cell", "n", "origin", "policy", "rows")

    def __init__(self, policy: BaselinePolicy) -> None:
        self.policy = policy
        self.origin: FloatArray | None = None
        self.rows: npt.NDArray[np.float32] | None = None
        self.n = 0
        self.last_cell = -(2**62)
        self.baseline: Baseline | None = None

    @property
    def ready(self) -> bool:
        return self.baseline is not None

    def update(self, end_cell: int, window: npt.NDArray[np.floating[Any]]) -> bool:
        """Take the cells of the window [W, C] ending at `end_cell` not seen before; returns `ready`."""
        if self.baseline is not None:
            return True
        w = len(window)
        new = min(end_cell - self.last_cell, w)
        if new <= 0:
            return False
        fresh = np.asarray(window[w - new:w - new + min(new, self.policy.cells - self.n)], dtype=np.float64)
        if self.rows is None or self.origin is None:
            self.rows = np.empty((self.policy.cells, window.shape[1]), dtype=np.float32)
            self.origin = np.nan_to_num(fresh[0])
        self.rows[self.n:self.n + len(fresh)] = fresh - self.origin
        self.n += len(fresh)
        self.last_cell = end_cell
        if self.n >= self.policy.cells:
            self.baseline = robust_baseline(self.rows.astype(np.float64) + self.origin, self.policy)
            self.rows = self.origin = None
        return self.baseline is not None

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint keeps: the rows so far, or the baseline once learnt."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"n": self.n, "last_cell": self.last_cell}
        if self.baseline is not None:
            arrays["b_center"] = np.asarray(self.baseline.center)
            arrays["b_scale"] = np.asarray(self.baseline.scale)
        elif self.rows is not None and self.origin is not None:
            arrays["b_rows"] = self.rows[: self.n]
            arrays["b_origin"] = self.origin
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.n, self.last_cell = int(meta["n"]), int(meta["last_cell"])
        if "b_center" in arrays and len(arrays["b_center"]) == len(self.policy.floor):
            self.baseline = Baseline(tuple(map(float, arrays["b_center"])),
                                     tuple(map(float, arrays["b_scale"])))
        elif "b_origin" in arrays and arrays["b_rows"].shape[1:] == (len(self.policy.floor),):
            self.n = min(self.n, len(arrays["b_rows"]), self.policy.cells)
            self.rows = np.empty((self.policy.cells, len(self.policy.floor)), dtype=np.float32)
            self.rows[: self.n] = arrays["b_rows"][: self.n]
            self.origin = np.asarray(arrays["b_origin"], dtype=np.float64)
        else:
            self.n, self.last_cell = 0, -(2**62)
