"""bench/cmapss_diagnose.py: the error breakdown and post-hoc corrections of cross-validated RULs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cmapss_diagnose", ROOT / "bench" / "cmapss_diagnose.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


diag = _module()


def write_run(folder: Path, preds: list[np.ndarray], truths: list[np.ndarray],
              members: list[np.ndarray] | None = None) -> Path:
    folder.mkdir(parents=True)
    for k, (p, t) in enumerate(zip(preds, truths, strict=True)):
        extra = {} if members is None else {"members": members[k]}
        np.savez(folder / f"fold{k}.npz", pred=p, truth=t, life=t + 100.0, **extra)
    return folder


def truths(seed: int = 0, folds: int = 4, n: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(7, 145, size=n) for _ in range(folds)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(-100, 100)), min_size=1, max_size=25))
def test_isotonic_matches_the_min_max_formula(points: list[tuple[int, float]]) -> None:
    """Pool adjacent violators gives the isotonic fit's closed form, max over j <= i of min over
    k >= i of the mean of y[j..k] (points in x order), and its knots rise."""
    x, y = np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points])
    kx, ky, sizes = diag.isotonic(x, y)
    ys = y[np.argsort(x, kind="stable")]
    n = len(ys)
    expected = [max(min(ys[j:k + 1].mean() for k in range(i, n)) for j in range(i + 1)) for i in range(n)]
    assert np.repeat(ky, sizes.astype(int)) == pytest.approx(expected, abs=1e-9)
    assert np.all(np.diff(ky) >= 0) and np.all(np.diff(kx) >= 0)


def test_corrections_undo_what_they_can_learn_from_the_other_folds() -> None:
    """A constant lateness is removed by the shift, a linear distortion by the line; raw keeps both."""
    ts = truths()
    late = diag.corrections([{"pred": t + 8.0, "truth": t} for t in ts])
    assert late["raw"][0] == pytest.approx(8.0)
    assert late["shift"][0] == pytest.approx(0.0, abs=1e-9)
    assert late["raw"][1] > late["shift"][1] == pytest.approx(0.0, abs=1e-9)
    squeezed = diag.corrections([{"pred": 40.0 + 0.5 * t, "truth": t} for t in ts])
    assert squeezed["line"][0] == pytest.approx(0.0, abs=1e-6)
    # Isotonic follows any rising map, short of the held-out predictions beyond the others' range.
    assert squeezed["isotonic"][0] < 1.0 < 15.0 < squeezed["shift"][0]


def test_bands_split_the_squared_error() -> None:
    """Each band's share of the squared error, and its bias, come from its own cuts only."""
    t = np.array([10.0, 20.0, 70.0, 130.0])
    p = t + np.array([1.0, -1.0, 10.0, -20.0])
    rows = diag.bands(p, t, t, diag.TRUTH_BANDS)
    by = {r["band"]: r for r in rows}
    assert set(by) == {"0-30", "60-90", "125-146"}
    assert by["0-30"]["n"] == 2 and by["0-30"]["bias"] == 0.0 and by["0-30"]["rmse"] == 1.0
    assert by["125-146"]["sse_share"] == pytest.approx(400 / 502, abs=1e-3)
    assert sum(r["sse_share"] for r in rows) == pytest.approx(1.0, abs=2e-3)


def test_runs_on_other_cuts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs are compared only on the same cuts; their average and error correlation are printed."""
    ts = truths()
    rng = np.random.default_rng(1)
    a = write_run(tmp_path / "a", [t + rng.normal(0, 10, t.shape) for t in ts], ts)
    b = write_run(tmp_path / "b", [t + rng.normal(0, 10, t.shape) for t in ts], ts)
    assert diag.main([str(a), str(b)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Independent errors: the average of two runs has about 1/sqrt(2) of their RMSE.
    assert abs(report["average"]["error_corr_min"]) < 0.2
    assert report["average"]["rmse"] < 0.8 * min(report[str(a)]["rmse"], report[str(b)]["rmse"])
    ts5 = truths(seed=5)
    other = write_run(tmp_path / "c", [t + rng.normal(0, 10, t.shape) for t in ts5], ts5)
    with pytest.raises(SystemExit, match="same folds and cuts"):
        diag.main([str(a), str(other)])
    with pytest.raises(SystemExit, match="no fold"):
        diag.main([str(tmp_path / "missing")])


def test_members_stand_for_the_prediction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--members scores the mean of the members named, not the shipped prediction; a run that did
    not keep them, or members it does not have, are refused."""
    ts = truths()
    e = np.resize([1.0, -1.0], len(ts[0]))  # errors of mean 0 and RMSE 1
    # Member 1 is member 0 off by +20, member 2 by -20: the shipped mean of all three is member 0.
    members = [np.stack([t + e, t + e + 20.0, t + e - 20.0]) for t in ts]
    run = write_run(tmp_path / "r", [t + e for t in ts], ts, members)
    for chosen, want in (("0", 1.0), ("1", 401**0.5), ("0,1", 101**0.5), ("1,2", 1.0)):
        assert diag.main([str(run), "--members", chosen]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report[str(run)]["rmse"] == pytest.approx(want, abs=1e-3)  # reported to 3 places
    with pytest.raises(SystemExit, match="the run kept 3"):
        diag.main([str(run), "--members", "0,3"])
    plain = write_run(tmp_path / "p", ts, ts)
    with pytest.raises(SystemExit, match="the run kept 0"):
        diag.main([str(plain), "--members", "0"])


def test_a_run_stopped_after_one_fold_is_scored_raw(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A single fold has no others to fit corrections on: its raw figures, and no correction."""
    ts = truths(folds=1)
    e = np.resize([3.0, -3.0], len(ts[0]))
    assert diag.main([str(write_run(tmp_path / "one", [ts[0] + e], ts))]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[str(tmp_path / "one")]
    assert report["rmse"] == pytest.approx(3.0) and report["corrected_rmse"] == {}
