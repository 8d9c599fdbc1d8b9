"""Named validation assets: how cross-validation (bench/cmapss_cv.py) holds out one fold of engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.test_fit import drifting_cmapss
from training.fit import cmapss_options, prepare


@pytest.fixture(scope="module")
def cmapss_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cv") / "train_FD009.txt"
    path.write_text(drifting_cmapss({u: 30 + 2 * u for u in range(1, 10)}, seed=3))
    return path


def test_val_assets_are_the_validation_split(cmapss_train: Path, tmp_path: Path) -> None:
    """Named validation assets are exactly the validation split; all the others train."""
    named = ("unit_002", "unit_005")
    p = prepare(cmapss_options(cmapss_train, tmp_path / "m.pt", window=10, val_assets=named))
    assert p.split.val == {"unit_002", "unit_005"}
    assert p.split.train == set(p.ws.assets) - {"unit_002", "unit_005"}
    assert {p.ws.assets[a] for a in p.val.asset} == {"unit_002", "unit_005"}


@pytest.mark.parametrize("names", [("unit_099",), (), tuple(f"unit_{u:03d}" for u in range(1, 10))])
def test_bad_val_assets_are_refused(cmapss_train: Path, tmp_path: Path, names: tuple[str, ...]) -> None:
    """Unknown assets, none, or all of them as validation is a clear error."""
    with pytest.raises(ValueError, match="val_assets must name some"):
        prepare(cmapss_options(cmapss_train, tmp_path / "m.pt", window=10, val_assets=names))
