"""Windows and labels from a gridded history: forecast targets, failure within the horizon, RUL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.spec import Normalisation
from agent.windows import cell_of, fill_forward, hold_cells, sliding_windows
from training.data import Event, History
from training.regimes import RowBlocks, Scaling, finite_blocks, rows_at, sample_index
from training.regimes import fit_normalisation as fit_rows

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
# The drift reference's quantiles come from at most this many training rows (plenty for 11 quantiles).
QUANTILE_SAMPLE = 200_000


@dataclass(frozen=True)
class WindowSet:
    """Windows as indices into one concatenated, forward-filled grid (no copies of windows).

    `ends[i]` is the row of window i's newest cell in `cells`; the window is rows
    ends[i]-W+1..ends[i], where rows before `first_row[i]` (the asset's first row) repeat
    that row (padding, only when windows were built with `pad_start`); its forecast
    targets are rows ends[i]+1..ends[i]+H.
    """

    cells: FloatArray          # [rows, C] forward-filled raw values
    ends: IntArray             # [N]
    end_cell: IntArray         # [N] absolute grid cell of each window's end
    asset: IntArray            # [N] index into `assets`
    fail: F32                  # [N] 1 if a failure falls within [end, end + fail_horizon]
    has_target: npt.NDArray[np.bool_]  # [N] forecast targets whole and in the same life
    rul: F32                   # [N] cells from the end to the next failure; NaN if none is seen
    observed: F32              # [N] cells from the end to the last cell known of this life
    first_row: IntArray        # [N] the asset's first row: padding repeats it
    assets: tuple[str, ...]
    window: int
    horizon: int

    def __len__(self) -> int:
        return len(self.ends)

    def subset(self, mask: npt.NDArray[np.bool_]) -> WindowSet:
        return WindowSet(self.cells, self.ends[mask], self.end_cell[mask], self.asset[mask],
                         self.fail[mask], self.has_target[mask], self.rul[mask], self.observed[mask],
                         self.first_row[mask], self.assets, self.window, self.horizon)

    def rows(self, idx: IntArray) -> IntArray:
        """Rows of `cells` that windows idx cover, [len(idx), W], padding clamped."""
        rows: IntArray = self.ends[idx][:, None] + np.arange(-self.window + 1, 1)[None, :]
        return np.maximum(rows, self.first_row[idx][:, None])

    def x(self, idx: IntArray, norm: Normalisation) -> F32:
        """Normalised windows [len(idx), W, C], through the agent's normalisation."""
        return norm.apply(self.cells[self.rows(idx)])

    def y(self, idx: IntArray, norm: Normalisation) -> F32:
        """Normalised forecast targets [len(idx), H, C] (zeros where not has_target)."""
        return _y(self, norm.apply(self.cells[self._target_rows(idx)]), idx)

    def _target_rows(self, idx: IntArray) -> IntArray:
        rows: IntArray = self.ends[idx][:, None] + np.arange(1, self.horizon + 1)[None, :]
        return np.minimum(rows, len(self.cells) - 1)

    def rul_target(self, cap: float) -> F32:
        """Piecewise-linear RUL min(cells to failure, cap); NaN where unknown.

        A window with no failure seen after it still has target `cap` when its life is
        observed for at least `cap` more cells (the machine certainly lived that long).
        """
        exact = np.minimum(self.rul, cap)
        censored = np.where(self.observed >= cap, np.float32(cap), np.float32(np.nan))
        return np.where(np.isfinite(self.rul), exact, censored).astype(np.float32)

    def inputs(self, norm: Normalisation) -> Inputs:
        """This set with every cell normalised once (normalisation is per cell, so equal to `x`)."""
        return Inputs(self, norm.apply(self.cells))

    def last_per_asset(self) -> IntArray:
        """Index of each asset's newest window (the C-MAPSS test protocol scores only these)."""
        last: dict[int, int] = {}
        for i in np.argsort(self.end_cell, kind="stable"):
            last[int(self.asset[i])] = int(i)
        return np.array([last[a] for a in sorted(last)], dtype=np.int64)


@dataclass(frozen=True)
class Inputs:
    """A window set with its cells already normalised: batches are gathers, nothing more."""

    ws: WindowSet
    z: F32

    def x(self, idx: IntArray) -> F32:
        return self.z[self.ws.rows(idx)]

    def y(self, idx: IntArray) -> F32:
        return _y(self.ws, self.z[self.ws._target_rows(idx)], idx)


def _y(ws: WindowSet, y: F32, idx: IntArray) -> F32:
    y = np.nan_to_num(y, nan=0.0)
    y[~ws.has_target[idx]] = 0.0
    return y


def fill_reach(max_gap: int, hold_s: float, period_s: float) -> int:
    """How many cells a channel's last value fills: `max_gap`, or its hold (report by exception)
    if longer, exactly as the agent's windows fill them."""
    return max(max_gap, hold_cells(hold_s, period_s))


def build_windows(history: History, events: list[Event], *, window: int, horizon: int,
                  fail_horizon: int, max_gap: int, pad_start: bool = False) -> WindowSet:
    """Every whole window of every asset, labelled; windows never span a failure or repair.

    With `pad_start`, an asset's first cells also end windows, padded with its first cell
    (as C-MAPSS test engines shorter than the window need).
    """
    blocks: list[FloatArray] = []
    parts: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in (
        "ends", "end_cell", "asset", "fail", "has_target", "rul", "observed", "first_row")}
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
        # The event's own cell is the last of the old life.
        life = np.searchsorted(boundaries, cell_ids, side="left")
        e_idx = sliding_windows(filled, ok, window)
        e_idx = e_idx[life[e_idx] == life[e_idx - window + 1]]
        if pad_start:
            head = np.arange(min(window - 1, n))
            whole = np.cumsum(~ok[head]) == 0
            e_idx = np.concatenate([head[whole & (life[head] == life[0])], e_idx])
        # Forecast targets: the next H rows whole and in the same life.
        t_end = e_idx + horizon
        in_range = t_end < n
        target_ok = np.zeros(len(e_idx), dtype=bool)
        if in_range.any():
            bad = np.concatenate([[0], np.cumsum(~ok)])
            te = t_end[in_range]
            whole_t = bad[te + 1] - bad[e_idx[in_range] + 1] == 0
            same_life = life[np.minimum(te, n - 1)] == life[e_idx[in_range]]
            target_ok[in_range] = whole_t & same_life
        ec = cell_ids[e_idx]
        # A sentinel far in the future: an asset that never fails has every label 0.
        far = np.iinfo(np.int64).max // 4
        next_fail = np.append(failures, far)[np.searchsorted(failures, ec, side="left")]
        next_event = np.append(boundaries, far)[np.searchsorted(boundaries, ec, side="left")]
        fails_next = (next_fail == next_event) & (next_fail < far)
        rul = np.where(fails_next, (next_fail - ec).astype(np.float64), np.nan)
        observed = np.minimum(next_event, cell_ids[-1] if n else 0) - ec
        blocks.append(filled)
        parts["ends"].append(e_idx + offset)
        parts["end_cell"].append(ec)
        parts["asset"].append(np.full(len(e_idx), a, dtype=np.int64))
        parts["fail"].append(((next_fail - ec) <= fail_horizon).astype(np.float32))
        parts["has_target"].append(target_ok)
        parts["rul"].append(rul.astype(np.float32))
        parts["observed"].append(observed.astype(np.float32))
        parts["first_row"].append(np.full(len(e_idx), offset, dtype=np.int64))
        offset += n
    cat = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in parts.items()}
    return WindowSet(
        cells=np.concatenate(blocks) if blocks else np.empty((0, len(history.channels))),
        ends=cat["ends"].astype(np.int64), end_cell=cat["end_cell"].astype(np.int64),
        asset=cat["asset"].astype(np.int64), fail=cat["fail"].astype(np.float32),
        has_target=cat["has_target"].astype(bool), rul=cat["rul"].astype(np.float32),
        observed=cat["observed"].astype(np.float32), first_row=cat["first_row"].astype(np.int64),
        assets=names, window=window, horizon=horizon)


def healthy_mask(ws: WindowSet, margin: float) -> npt.NDArray[np.bool_]:
    """Windows far from any failure: no failure within the horizon and none within `margin` cells."""
    far = ~np.isfinite(ws.rul) | (ws.rul > margin)
    return np.asarray((ws.fail == 0) & far)


def covered(ws: WindowSet) -> npt.NDArray[np.bool_]:
    """Which rows of `ws.cells` a window set's windows cover."""
    edges = np.zeros(len(ws.cells) + 1, dtype=np.int64)
    np.add.at(edges, np.maximum(ws.ends - ws.window + 1, ws.first_row), 1)
    np.add.at(edges, ws.ends + 1, -1)
    return np.asarray(np.cumsum(edges[:-1]) > 0)


def training_rows(ws: WindowSet) -> FloatArray:
    """The raw rows that a window set's windows cover (what the normalisation is fitted on)."""
    return ws.cells[covered(ws)]


def input_quantiles(ws: WindowSet, n: int = 11) -> tuple[tuple[float, ...], ...]:
    """Per channel, `n` quantiles (probabilities 0..1) of the rows training windows cover.

    Stored in the model file as the reference for the agent's input-drift measure (PSI).
    """
    return quantiles_of(lambda: (training_rows(ws),), n)


def quantiles_of(blocks: RowBlocks, n: int = 11) -> tuple[tuple[float, ...], ...]:
    """`input_quantiles` of training rows given as blocks: of a seeded sample of at most
    QUANTILE_SAMPLE rows (all of them when fewer), the same whether or not they fit in memory."""
    count = sum(len(x) for x in finite_blocks(blocks))
    if count == 0:
        return ()
    rows = rows_at(blocks, sample_index(count, QUANTILE_SAMPLE, seed=0))
    q = np.nanquantile(rows, np.linspace(0.0, 1.0, n), axis=0)  # [n, C]
    if not np.isfinite(q).all():
        return ()
    return tuple(tuple(float(v) for v in q[:, c]) for c in range(q.shape[1]))


def fit_normalisation(ws: WindowSet, regime_channels: tuple[int, ...] = (), n_regimes: int | None = None,
                      scaling: Scaling = "z", seed: int = 0, clip: float = 0.0) -> Normalisation:
    """The normalisation fitted on the rows training windows cover (per regime if there are several)."""
    return fit_rows(training_rows(ws), regime_channels, n_regimes, scaling, seed, clip)
