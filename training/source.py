"""Where training windows come from: normalised, labelled windows handed out by asset.

A training loop asks a `WindowSource` for the windows of some of its assets at a time (a
rank's shard, a group per epoch), so it never needs every window at once. `MemorySource`
hands out views of windows already in memory; `training.stream.ParquetSource` builds them
from a gridded cache on disk. Both give the same windows for the same assets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from training.labels import Inputs


class WindowSource(Protocol):
    """Windows by asset. `windows_of` returns the windows of the chosen assets (indices into
    `assets`), in `assets` order; the result's `ws.asset` indexes its own `ws.assets`."""

    @property
    def assets(self) -> tuple[str, ...]: ...   # read-only, so frozen dataclasses qualify

    def windows_of(self, assets: Sequence[int]) -> Inputs: ...


@dataclass(frozen=True)
class MemorySource:
    """A source over windows already in memory: `windows_of` is a view, nothing is copied but labels."""

    data: Inputs
    assets: tuple[str, ...]

    @classmethod
    def of(cls, data: Inputs, assets: Sequence[str] | None = None) -> MemorySource:
        """The source of `data`'s windows; `assets` (default: those with windows) sorted by name."""
        ws = data.ws
        names = sorted({ws.assets[a] for a in np.unique(ws.asset)} if assets is None else set(assets))
        return cls(data, tuple(names))

    def windows_of(self, assets: Sequence[int]) -> Inputs:
        ws = self.data.ws
        wanted = {self.assets[i] for i in assets}
        codes = [k for k, name in enumerate(ws.assets) if name in wanted]
        return Inputs(ws.subset(np.isin(ws.asset, codes)), self.data.z)
