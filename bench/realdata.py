"""The real data sets of bench/real.py, as histories to train on and streams to replay.

SMD (../shared/data/smd/README.md): 8 server machines, 38 metrics a minute. Each machine's
`_train` file is its history (one asset each, one wide CSV for all); its `_test` file, the rows
that follow, is replayed and scored against the operators' anomaly windows.

The hydraulic rig (../shared/data/hydraulic/README.md): the 8 channels at 1 Hz laid end to end,
cycle after cycle, as one asset "rig". Normal is a cycle with the cooler, the valve and the pump
as new (cooler 100 %, valve 100 %, no leakage; the accumulator is not visible in these channels,
the README says, and is not scored). The history to train on is the first 60 % of the normal
cycles, in recording order; the whole recording is replayed, and every cycle not trained on is
scored: a degraded one should be flagged, a normal one not.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: where every stream's first row lies
SMD_PERIOD = 60.0
HYDRAULIC_CHANNELS = ("TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE")
HYDRAULIC_TRAIN_SHARE = 0.6


@dataclass
class Stream:
    """One asset's rows to replay: event times [N] and values [N, C]."""

    ts: FloatArray
    values: FloatArray


@dataclass
class Dataset:
    name: str
    channels: tuple[str, ...]
    period_s: float
    streams: dict[str, Stream]
    labels: dict[str, npt.NDArray[np.int64]]          # per stream row: 1 in an anomaly (or degraded)
    train: dict[str, FloatArray]                       # each asset's training rows (for the baselines)
    interpretation: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # window start -> channels
    scored: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)  # rows that count (default: all)
    kinds: dict[str, dict[str, npt.NDArray[np.bool_]]] = field(default_factory=dict)  # degradation -> rows


def _read_csv_gz(path: Path) -> tuple[list[str], FloatArray]:
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
        return header, np.loadtxt(fh, delimiter=",", ndmin=2)


def _write_wide(path: Path, channels: tuple[str, ...], rows: list[tuple[str, FloatArray, FloatArray]]) -> None:
    """A wide history: ts,asset,<channels> (one block of rows per asset)."""
    with path.open("w") as f:
        f.write("ts,asset," + ",".join(channels) + "\n")
        for asset, ts, values in rows:
            for t, v in zip(ts, values, strict=True):
                f.write(f"{t:.0f},{asset}," + ",".join(f"{x:.6g}" for x in v) + "\n")


def smd(root: Path, work: Path) -> tuple[Dataset, Path]:
    """The SMD machines: their test streams, and their training history written to `work`."""
    folder = root / "smd"
    history: list[tuple[str, FloatArray, FloatArray]] = []
    streams: dict[str, Stream] = {}
    labels: dict[str, npt.NDArray[np.int64]] = {}
    interp: dict[str, dict[int, list[int]]] = {}
    channels: tuple[str, ...] = ()
    for train_file in sorted(folder.glob("*_train.csv.gz")):
        machine = train_file.name.removesuffix("_train.csv.gz")
        header, train = _read_csv_gz(train_file)
        _, test = _read_csv_gz(folder / f"{machine}_test.csv.gz")
        channels = tuple(header[1:])
        n = len(train)
        history.append((machine, T0 + train[:, 0] * SMD_PERIOD, train[:, 1:]))
        streams[machine] = Stream(T0 + (test[:, 0] + n) * SMD_PERIOD, test[:, 1:-1])
        labels[machine] = test[:, -1].astype(np.int64)
        interp[machine] = {}
        for line in (folder / "interpretation_label" / f"{machine}.txt").read_text().split():
            rows, chans = line.split(":")
            interp[machine][int(rows.split("-")[0])] = [int(c) - 1 for c in chans.split(",")]
    path = work / "smd_history.csv"
    _write_wide(path, channels, history)
    return Dataset("smd", channels, SMD_PERIOD, streams, labels, {m: v for m, _, v in history}, interp), path


def hydraulic(root: Path, work: Path) -> tuple[Dataset, Path]:
    """The rig's recording as one stream, and its first normal cycles as the history to train on."""
    folder = root / "hydraulic"
    cycles = np.stack([np.loadtxt(folder / f"{c}.txt") for c in HYDRAULIC_CHANNELS], axis=-1)  # [K, 60, C]
    profile = np.loadtxt(folder / "profile.txt", ndmin=2)
    n_cycles, per = cycles.shape[:2]
    cooler, valve, pump = profile[:, 0], profile[:, 1], profile[:, 2]
    normal = (cooler == 100) & (valve == 100) & (pump == 0)
    normal_idx = np.flatnonzero(normal)
    trained = np.zeros(n_cycles, dtype=bool)
    trained[normal_idx[: int(len(normal_idx) * HYDRAULIC_TRAIN_SHARE)]] = True
    ts = T0 + np.arange(n_cycles * per, dtype=np.float64)
    values = cycles.reshape(n_cycles * per, -1)
    per_row = np.repeat(np.arange(n_cycles), per)
    rows = trained[per_row]
    path = work / "hydraulic_history.csv"
    _write_wide(path, HYDRAULIC_CHANNELS, [("rig", ts[rows], values[rows])])
    kinds = {
        "cooler 3 %": cooler == 3, "cooler 20 %": cooler == 20, "valve 73-80 %": valve <= 80,
        "valve 90 %": valve == 90, "pump leakage 2": pump == 2, "pump leakage 1": pump == 1,
    }
    return Dataset(
        "hydraulic", HYDRAULIC_CHANNELS, 1.0, {"rig": Stream(ts, values)},
        {"rig": (~normal[per_row]).astype(np.int64)}, {"rig": values[rows]}, scored={"rig": ~rows},
        kinds={"rig": {k: v[per_row] for k, v in kinds.items()}}), path
