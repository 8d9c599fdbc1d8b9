"""Windows and labels from a gridded history: forecast targets, failure within the horizon, splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.spec import Normalisation
from agent.windows import cell_of, fill_forward, sliding_windows
from training.data import Event, History

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class WindowSet:
    """Windows as indices into one concatenated, forward-filled grid (no copies of windows).

    `ends[i]` is the row of window i's newest cell in `cells`; the window is rows
    ends[i]-W+1..ends[i] and its forecast targets rows ends[i]+1..ends[i]+H.
    """

    cells: FloatArray          # [rows, C] forward-filled raw values
    ends: IntArray             # [N]
    end_cell: IntArray         # [N] absolute grid cell of each window's end
    asset: IntArray            # [N] index into `assets`
    fail: npt.NDArray[np.float32]    # [N] 1 if a failure falls within (end, end + fail_horizon]
    has_target: npt.NDArray[np.bool_]  # [N] forecast targets whole and in the same life
    assets: tuple[str, ...]
    window: int
    horizon: int

    def __len__(self) -> int:
        return len(self.ends)

    def subset(self, mask: npt.NDArray[np.bool_]) -> WindowSet:
        return WindowSet(self.cells, self.ends[mask], self.end_cell[mask], self.asset[mask],
                         self.fail[mask], self.has_target[mask], self.assets, self.window, self.horizon)

    def x(self, idx: IntArray, norm: Normalisation) -> npt.NDArray[np.float32]:
        """Normalised windows [len(idx), W, C]."""
        rows = self.ends[idx][:, None] + np.arange(-self.window + 1, 1)[None, :]
        return normalise(self.cells[rows], norm)

    def y(self, idx: IntArray, norm: Normalisation) -> npt.NDArray[np.float32]:
        """Normalised forecast targets [len(idx), H, C] (garbage where not has_target)."""
        rows = self.ends[idx][:, None] + np.arange(1, self.horizon + 1)[None, :]
        rows = np.minimum(rows, len(self.cells) - 1)
        return np.nan_to_num(normalise(self.cells[rows], norm), nan=0.0)


def normalise(x: FloatArray, norm: Normalisation) -> npt.NDArray[np.float32]:
    """The agent's normalisation: (x - mean) / std per channel."""
    return ((x - np.asarray(norm.mean)) / np.asarray(norm.std)).astype(np.float32)


def build_windows(history: History, events: list[Event], *, window: int, horizon: int,
                  fail_horizon: int, max_gap: int) -> WindowSet:
    """Every whole window of every asset, labelled; windows never span a failure or repair."""
    blocks: list[FloatArray] = []
    ends, end_cell, asset, fail, has_target = [], [], [], [], []
    offset = 0
    names = tuple(s.asset for s in history.assets)
    for a, s in enumerate(history.assets):
        filled, ok = fill_forward(s.grid, max_gap)
        n = len(filled)
        cell_ids = s.start_cell + np.arange(n)
        mine = [e for e in events if e.asset == s.asset]
        boundaries = np.array(sorted(cell_of(e.ts, history.period_s) for e in mine), dtype=np.int64)
        failures = np.array(sorted(cell_of(e.ts, history.period_s) for e in mine
                                   if e.event == "failure"), dtype=np.int64)
        # A life changes after each event: cells after a failure or repair describe another machine.
        life = np.searchsorted(boundaries, cell_ids, side="left")
        e_idx = sliding_windows(filled, ok, window)
        e_idx = e_idx[life[e_idx] == life[e_idx - window + 1]]
        # Forecast targets: the next H rows whole and in the same life.
        t_end = e_idx + horizon
        in_range = t_end < n
        target_ok = np.zeros(len(e_idx), dtype=bool)
        if in_range.any():
            bad = np.concatenate([[0], np.cumsum(~ok)])
            te = t_end[in_range]
            whole = bad[te + 1] - bad[e_idx[in_range] + 1] == 0
            same_life = life[np.minimum(te, n - 1)] == life[e_idx[in_range]]
            target_ok[in_range] = whole & same_life
        ec = cell_ids[e_idx]
        # A sentinel far in the future: an asset that never fails has every label 0.
        upcoming = np.append(failures, np.iinfo(np.int64).max // 2)
        next_fail = upcoming[np.searchsorted(failures, ec, side="right")]
        label = (next_fail - ec) <= fail_horizon
        blocks.append(filled)
        ends.append(e_idx + offset)
        end_cell.append(ec)
        asset.append(np.full(len(e_idx), a, dtype=np.int64))
        fail.append(label.astype(np.float32))
        has_target.append(target_ok)
        offset += n
    return WindowSet(
        cells=np.concatenate(blocks) if blocks else np.empty((0, len(history.channels))),
        ends=np.concatenate(ends).astype(np.int64), end_cell=np.concatenate(end_cell).astype(np.int64),
        asset=np.concatenate(asset), fail=np.concatenate(fail), has_target=np.concatenate(has_target),
        assets=names, window=window, horizon=horizon)


def split_assets(assets: tuple[str, ...], failing: set[str], val_fraction: float,
                 seed: int) -> tuple[set[str], set[str]]:
    """Split by asset into train and validation, spreading failing assets over both."""
    rng = np.random.default_rng(seed)
    train: set[str] = set()
    val: set[str] = set()
    for group in (sorted(a for a in assets if a in failing), sorted(a for a in assets if a not in failing)):
        order = [group[i] for i in rng.permutation(len(group))]
        k = int(round(len(order) * val_fraction))
        if len(order) >= 2:
            k = min(max(k, 1), len(order) - 1)
        val.update(order[:k])
        train.update(order[k:])
    if not train or not val:
        raise ValueError(f"need at least 2 assets to split into train and validation, got {len(assets)}")
    return train, val


def fit_normalisation(ws: WindowSet) -> Normalisation:
    """Per-channel mean and std over the rows that training windows cover."""
    edges = np.zeros(len(ws.cells) + 1, dtype=np.int64)
    np.add.at(edges, ws.ends - ws.window + 1, 1)
    np.add.at(edges, ws.ends + 1, -1)
    x = ws.cells[np.cumsum(edges[:-1]) > 0]
    std = np.maximum(x.std(axis=0), 1e-6)
    return Normalisation(tuple(float(v) for v in x.mean(axis=0)), tuple(float(v) for v in std))
