"""NASA C-MAPSS turbofan files (`--format cmapss`): units are assets, cycles are time.

A row is `unit cycle op_setting_1..3 sensor_1..21`, whitespace-separated, no header.
Each cycle is one grid cell (period 1). A training file's units run to failure, so each
fails at its last cycle (RUL 0 there). A test file's units are cut off early; the matching
`RUL_FD00x.txt` gives each unit's RUL at its last cycle, so it fails that many cycles later.
See ../shared/data/cmapss/README.md and docs/training.md for the evaluation protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.errors import DataError
from training import readers
from training.data import AssetSeries, Event, History

OP_SETTINGS = ("op_setting_1", "op_setting_2", "op_setting_3")
CHANNELS = OP_SETTINGS + tuple(f"sensor_{i}" for i in range(1, 22))
# The 14 sensors that vary in FD001 (Saxena et al.'s T24 T30 T50 P30 Nf Nc Ps30 phi NRf NRc
# BPR htBleed W31 W32); most papers use them on every subset.
INFORMATIVE_SENSORS = tuple(f"sensor_{i}" for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21))
# The cycle counter can be picked as a channel too: the engine's age, as a plant's running-hours
# meter gives a machine's. At one level of wear, a young engine is wearing fast and an old one
# slowly; without its age the model predicts short lives late and long lives early (session 7).
CYCLE = "cycle"
# The model's default inputs: the operating settings (which name the regime), those sensors, the age.
DEFAULT_CHANNELS = OP_SETTINGS + INFORMATIVE_SENSORS + (CYCLE,)
# The columns after `unit`, in file order: what `channels` can pick.
PICKABLE = (CYCLE, *CHANNELS)
N_COLUMNS = 2 + len(CHANNELS)
CHUNK_LINES = 50_000


@dataclass(frozen=True)
class CmapssData:
    """A C-MAPSS file as a history, its failure events, and (test files) the RUL at each unit's end."""

    history: History
    events: list[Event]
    truth: dict[str, float] | None


def asset_name(unit: int) -> str:
    return f"unit_{unit:03d}"


def _rows(path: Path) -> Iterator[tuple[int, npt.NDArray[np.float64]]]:
    """Blocks of parsed rows with the line number of their first row."""
    try:
        f = path.open("r", encoding="ascii")
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from exc
    with f:
        line_no, block = 0, []
        try:
            for line in f:
                line_no += 1
                if line.strip():
                    block.append((line_no, line))
                if len(block) >= CHUNK_LINES:
                    yield block[0][0], _parse(path, block)
                    block = []
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: row {line_no + 1}: not ASCII text") from exc
        if block:
            yield block[0][0], _parse(path, block)


def _parse(path: Path, block: list[tuple[int, str]]) -> npt.NDArray[np.float64]:
    out = np.empty((len(block), N_COLUMNS))
    for i, (line_no, line) in enumerate(block):
        parts = line.split()
        if len(parts) != N_COLUMNS:
            raise DataError(f"{path}: row {line_no}: {len(parts)} columns, C-MAPSS rows have {N_COLUMNS}")
        try:
            out[i] = [float(p) for p in parts]
        except ValueError:
            col = next(j for j, p in enumerate(parts) if not _is_float(p))
            raise DataError(f"{path}: row {line_no}, column {_column_name(col)}: "
                            f"{parts[col]!r} is not a number") from None
        if not np.isfinite(out[i]).all():
            col = int(np.argmax(~np.isfinite(out[i])))
            raise DataError(f"{path}: row {line_no}, column {_column_name(col)}: not a finite number")
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_name(j: int) -> str:
    return ("unit", *PICKABLE)[j]


def rul_file_for(path: Path) -> Path | None:
    """`RUL_FD00x.txt` beside a `test_FD00x.txt` file (None for other names)."""
    if path.name.startswith("test_"):
        return path.with_name("RUL_" + path.name[len("test_"):])
    return None


def load_cmapss(path: Path, rul_path: Path | None = None,
                channels: tuple[str, ...] | None = None) -> CmapssData:
    """Read a C-MAPSS train or test file.

    A `test_` file needs its RUL file (`rul_path`, or `RUL_...` beside it); every other
    file is taken as run-to-failure. `channels` picks and orders columns (default: the 24 after
    `cycle`, which can be picked too: the engine's age).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if rul_path is None and (guess := rul_file_for(path)) is not None:
        if not guess.exists():
            raise DataError(f"{path}: a C-MAPSS test file needs its RUL file ({guess.name}); pass --rul")
        rul_path = guess
    want = CHANNELS if channels is None else tuple(channels)
    unknown = [c for c in want if c not in PICKABLE]
    if unknown:
        raise DataError(f"{path}: {unknown} are not C-MAPSS columns ({', '.join(PICKABLE)})")
    cols = [1 + PICKABLE.index(c) for c in want]
    series: list[AssetSeries] = []
    last: dict[int, int] = {}
    rows: dict[int, list[npt.NDArray[np.float64]]] = {}
    for line0, block in _rows(path):
        for i, row in enumerate(block):
            unit, cycle = int(row[0]), int(row[1])
            expected = last.get(unit, 0) + 1
            if cycle != expected or row[0] != unit:
                raise DataError(f"{path}: row {line0 + i}, column cycle: unit {unit} has cycle "
                                f"{row[1]:g} where {expected} was expected")
            last[unit] = cycle
        for unit in np.unique(block[:, 0]).astype(int):
            rows.setdefault(int(unit), []).append(block[block[:, 0] == unit][:, cols])
    if not rows:
        raise DataError(f"{path}: no rows")
    for unit in sorted(rows):
        series.append(AssetSeries(asset_name(unit), 1, np.concatenate(rows[unit])))
    truth = _read_rul(rul_path, sorted(rows)) if rul_path is not None else None
    events = [Event(float(last[u] + (truth[asset_name(u)] if truth else 0.0)), asset_name(u), "failure")
              for u in sorted(rows)]
    fp = readers.fingerprint(path, *([rul_path] if rul_path else []))
    return CmapssData(History(want, 1.0, tuple(series), fp), events, truth)


def _read_rul(path: Path, units: list[int]) -> dict[str, float]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    values: list[float] = []
    for line_no, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            v = float(line.split()[0])
        except ValueError:
            raise DataError(f"{path}: row {line_no}, column rul: {line.strip()!r} is not a number") from None
        if not v >= 0:
            raise DataError(f"{path}: row {line_no}, column rul: RUL must be >= 0")
        values.append(v)
    if len(values) != len(units) or units != list(range(1, len(units) + 1)):
        raise DataError(f"{path}: {len(values)} RUL rows for units 1..{len(units)} of the test file")
    return {asset_name(u): values[u - 1] for u in units}
