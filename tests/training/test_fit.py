"""fit -> export -> inspect / evaluate, reproducibility and the CLI's error handling."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.errors import ModelError
from agent.runtime import load_model
from agent.spec import ModelSpec
from tests.training.conftest import tiny_options
from training import cli
from training.evaluate import evaluate, evaluate_file
from training.export import export
from training.fit import FitOptions, cmapss_options, fit
from training.model import Forecaster, ModelConfig
from training.report import render


@pytest.fixture(scope="module")
def fitted(small_history: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, ModelSpec, dict]:
    out = tmp_path_factory.mktemp("fit") / "model.pt"
    spec, summary = fit(tiny_options(small_history, out))
    return out, spec, summary


class TestFit:
    def test_model_file_carries_its_contract(self, fitted: tuple[Path, ModelSpec, dict]) -> None:
        """The exported file loads in the agent with the metadata fit wrote, heads included."""
        path, spec, summary = fitted
        rt = load_model(path)
        assert rt.spec == spec and rt.spec.version == summary["version"]
        assert set(rt.spec.heads) == {"forecast_mean", "forecast_logvar", "fail_prob"}
        assert rt.spec.window == 12 and rt.spec.period_s == 60.0
        assert 0 < rt.spec.thresholds.warning <= rt.spec.thresholds.critical < 1
        assert path.with_suffix(".summary.json").exists()

    def test_splits_are_disjoint(self, fitted: tuple[Path, ModelSpec, dict]) -> None:
        """No asset is in both the training and the validation split."""
        _, _, summary = fitted
        assert not set(summary["train_assets"]) & set(summary["val_assets"])

    def test_thresholds_meet_the_budget_on_validation(self, fitted: tuple[Path, ModelSpec, dict]) -> None:
        """Calibration keeps false warnings on the data it was fit on within the budget (1 / 30 days)."""
        _, _, summary = fitted
        v = summary["validation"]
        assert v["false_warnings"] <= max(1.0, v["asset_days"] / 30.0)

    def test_same_seed_same_weights(self, small_history: tuple[Path, Path], tmp_path: Path,
                                    fitted: tuple[Path, ModelSpec, dict]) -> None:
        """Training is reproducible on the CPU: the same seed gives the same version hash."""
        spec, _ = fit(tiny_options(small_history, tmp_path / "again.pt"))
        assert spec.version == fitted[1].version
        other, _ = fit(tiny_options(small_history, tmp_path / "other.pt", seed=1))
        assert other.version != spec.version

    def test_evaluate_scores_like_validation(self, fitted: tuple[Path, ModelSpec, dict],
                                             small_history: tuple[Path, Path]) -> None:
        """evaluate runs the exported file over a history and reports alert and forecast metrics."""
        path, _, _ = fitted
        m = evaluate(path, small_history[0], small_history[1])
        assert m["failures"] >= 1 and m["windows"] > 1000
        assert 0 <= m["failures_caught"] <= m["failures"]
        assert np.isfinite(m["forecast_nll"]) and 0 < m["fail_pr_auc"] <= 1


    def test_evaluate_renders_the_report(self, fitted: tuple[Path, ModelSpec, dict],
                                         small_history: tuple[Path, Path], tmp_path: Path) -> None:
        """The report has its metrics table, forecast error per channel and real PNG plots."""
        ev = evaluate_file(fitted[0], small_history[0], small_history[1])
        page = render(ev, tmp_path / "rep")
        text = page.read_text()
        assert "## Metrics" in text and "| fail_pr_auc |" in text and "## Forecast error per channel" in text
        for name in ("risk_timelines", "calibration", "lead_times"):
            assert (tmp_path / "rep" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"({name}.png)" in text
        assert "skipped predicted vs true RUL" in text  # this model has no RUL head
        assert json.loads((tmp_path / "rep" / "metrics.json").read_text()) == ev.metrics


CONDITIONS = np.array([[0.0, 0.0, 100.0], [20.0, 0.7, 100.0], [42.0, 0.84, 60.0]])


def drifting_cmapss(lives: dict[int, int], seed: int, regimes: int = 1) -> str:
    """C-MAPSS rows whose sensors 2 and 3 rise towards each unit's end (a learnable RUL);
    with regimes > 1, each cycle runs at a random operating condition that shifts every sensor."""
    rng = np.random.default_rng(seed)
    lines = []
    for unit, life in lives.items():
        for cycle in range(1, life + 1):
            wear = np.exp(3.0 * cycle / life)
            k = rng.integers(regimes)
            v = np.concatenate([CONDITIONS[k] + rng.normal(0, 0.001, 3), rng.normal(0, 0.05, 21) + 30 * k])
            v[4:6] += wear
            lines.append(" ".join([str(unit), str(cycle), *(f"{x:.5f}" for x in v)]) + "  ")
    return "\n".join(lines) + "\n"


class TestCmapssFit:
    def test_fit_and_evaluate_a_tiny_cmapss_set(self, tmp_path: Path) -> None:
        """--format cmapss trains an RUL model; evaluate scores each test unit's last window (padded)."""
        train = tmp_path / "train_FD009.txt"
        train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 11)}, seed=0))
        test = tmp_path / "test_FD009.txt"
        test.write_text(drifting_cmapss({1: 30, 2: 8, 3: 25}, seed=1))
        (tmp_path / "RUL_FD009.txt").write_text("12\n30\n5\n")
        opts = cmapss_options(train, tmp_path / "c.pt", window=10, hidden=8, epochs=3, threads=1,
                              progress=False, val_fraction=0.3)
        spec, summary = fit(opts)
        assert set(spec.heads) == {"fail_prob", "rul"} and spec.rul_cap == 125.0
        assert spec.period_s == 1.0 and spec.normalisation.n_regimes == 0
        assert not set(summary["train_assets"]) & set(summary["val_assets"])
        m = evaluate(tmp_path / "c.pt", test, fmt="cmapss")
        assert m["rul_assets"] == 3 and np.isfinite(m["rul_rmse"]) and m["rul_score"] > 0
        assert cli.main(["evaluate", str(tmp_path / "c.pt"), str(test), "--format", "cmapss",
                         "--report", str(tmp_path / "rep")]) == 0
        assert (tmp_path / "rep" / "rul.png").exists()


    def test_several_operating_regimes_are_learnt_and_stored(self, tmp_path: Path) -> None:
        """A multi-condition C-MAPSS file (like FD002/FD004) gets its regimes found on train and stored."""
        train = tmp_path / "train_FD009.txt"
        train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 9)}, seed=2, regimes=3))
        opts = cmapss_options(train, tmp_path / "r.pt", window=10, hidden=8, epochs=1, members=1,
                              threads=1, progress=False, val_fraction=0.3)
        spec, summary = fit(opts)
        assert summary["regimes"] == 3 and spec.normalisation.n_regimes == 3
        assert load_model(tmp_path / "r.pt").spec.normalisation == spec.normalisation


class TestExport:
    def test_rul_model_exports_with_parity(self, tmp_path: Path,
                                           fitted: tuple[Path, ModelSpec, dict]) -> None:
        """A model with every head exports, and the agent's runtime matches the eager model within 1e-5."""
        torch.manual_seed(0)
        model = Forecaster(ModelConfig(n_channels=5, horizon=2, hidden=8, rul_head=True, rul_cap=50.0,
                                       head_hidden=4)).eval()
        spec = replace(fitted[1], channels=tuple("abcde"), heads=(
            "forecast_mean", "forecast_logvar", "fail_prob", "rul"), rul_cap=50.0)
        probe = np.random.default_rng(0).normal(size=(4, 12, 5)).astype(np.float32)
        export(model, spec, probe, tmp_path / "r.pt")
        rt = load_model(tmp_path / "r.pt")
        out = rt.infer(probe)
        with torch.no_grad():
            eager = model(torch.from_numpy(probe))
        for key in spec.heads:
            assert np.abs(getattr(out, key) - eager[key].numpy()).max() <= 1e-5


    def test_parity_failure_is_refused(self, tmp_path: Path, fitted: tuple[Path, ModelSpec, dict],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """Export refuses, and writes nothing, when the scripted outputs differ from eager ones."""
        torch.manual_seed(0)
        model = Forecaster(ModelConfig(n_channels=5, horizon=2, hidden=8))
        other = Forecaster(ModelConfig(n_channels=5, horizon=2, hidden=8))  # other weights
        real_script = torch.jit.script
        monkeypatch.setattr(torch.jit, "script", lambda m: real_script(other))
        probe = np.random.default_rng(0).normal(size=(4, 12, 5)).astype(np.float32)
        with pytest.raises(ModelError, match="differs from eager"):
            export(model, fitted[1], probe, tmp_path / "x.pt")
        assert not (tmp_path / "x.pt").exists()


class TestCli:
    def test_inspect_prints_metadata(self, fitted: tuple[Path, ModelSpec, dict],
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """`vigil-train inspect` prints the file's metadata as JSON."""
        assert cli.main(["inspect", str(fitted[0])]) == 0
        meta = json.loads(capsys.readouterr().out)
        assert meta["version"] == fitted[1].version and meta["channels"] == list(fitted[1].channels)

    def test_bad_input_is_one_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing history file or a non-model file exits 1 with one line, no traceback."""
        args = ["fit", "--history", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.pt")]
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no such file" in err
        junk = tmp_path / "junk.pt"
        junk.write_bytes(b"not a model")
        assert cli.main(["inspect", str(junk)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vigil-train: error:") and "TorchScript" in err


class TestRefit:
    def test_refit_ships_members_retrained_on_validation_assets_too(self, tmp_path: Path) -> None:
        """--refit trains each member again on all assets for the epochs validation chose, ships those,
        and keeps the calibration the held-out fit made (the same as without --refit)."""
        train = tmp_path / "train_FD009.txt"
        train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 11)}, seed=0))
        base = dict(window=10, hidden=8, epochs=3, windows_per_epoch=4000, members=2, threads=1,
                    progress=False, val_fraction=0.3)
        spec_a, plain = fit(cmapss_options(train, tmp_path / "a.pt", refit=False, **base))
        spec_b, refit = fit(cmapss_options(train, tmp_path / "b.pt", refit=True, **base))
        assert refit["members"] == plain["members"]  # the first fit is the same run
        assert refit["refit"] == {"assets": 10, "epochs_run": [m["best_epoch"] for m in plain["members"]]}
        assert spec_b.thresholds == spec_a.thresholds and refit["temperature"] == plain["temperature"]
        assert json.dumps(refit["validation"]) == json.dumps(plain["validation"])  # NaN lead times alike
        assert spec_b.version != spec_a.version
        from training.cmapss import load_cmapss

        grids = [s.grid for s in load_cmapss(train, channels=spec_a.channels).history.assets]
        x = spec_a.normalise(np.stack([g[-10 - k:len(g) - k] for g in grids[:3] for k in (0, 15)]))
        ra, rb = (load_model(tmp_path / f"{n}.pt").infer(x).fail_prob for n in "ab")  # RUL may clamp to 0
        assert ra is not None and rb is not None and not np.allclose(ra, rb)
        with pytest.raises(ValueError, match="in memory"):
            fit(FitOptions(history=train, out=tmp_path / "s.pt", refit=True, stream=True))
        with pytest.raises(ValueError, match="augment"):
            fit(cmapss_options(train, tmp_path / "g.pt", augment="gan", **base))

    def test_members_in_worker_processes_train_what_one_process_trains(self, tmp_path: Path) -> None:
        """With 2 threads the members (and their refits) train in 2 worker processes of one
        thread each; the model file is the very one a single-threaded run writes, bit for bit."""
        train = tmp_path / "train_FD009.txt"
        train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 9)}, seed=0))
        base = dict(window=10, hidden=8, epochs=2, windows_per_epoch=2000, members=3, progress=False,
                    val_fraction=0.3)
        one, s1 = fit(cmapss_options(train, tmp_path / "one.pt", threads=1, **base))
        two, s2 = fit(cmapss_options(train, tmp_path / "two.pt", threads=2, **base))
        assert (s1["member_processes"], s2["member_processes"]) == (1, 2)
        assert one.version == two.version and s1["members"] == s2["members"]
        assert s1["refit"] == s2["refit"]
        _, s3 = fit(cmapss_options(train, tmp_path / "three.pt", threads=2, member_processes=1, **base))
        assert s3["member_processes"] == 1
        with pytest.raises(ValueError, match="member_processes must be 1 or more"):
            fit(cmapss_options(train, tmp_path / "zero.pt", member_processes=0, **base))
        args = cli.build_parser().parse_args(["fit", "--history", "h.txt", "--out", "m.pt",
                                              "--member-processes", "3"])
        assert cli.fit_options(args).member_processes == 3

    def test_members_side_by_side_report_every_epoch_as_whole_labelled_lines(
            self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """Workers share the terminal: each epoch of each member (and of its refit) is one line
        that names the member, with no batch bars from the workers in between."""
        train = tmp_path / "train_FD009.txt"
        train.write_text(drifting_cmapss({u: 40 + 3 * u for u in range(1, 9)}, seed=0))
        _, summary = fit(cmapss_options(train, tmp_path / "p.pt", window=10, hidden=8, epochs=2,
                                        windows_per_epoch=2000, members=2, threads=2, val_fraction=0.3))
        assert summary["member_processes"] == 2
        lines = capfd.readouterr().err.replace("\r", "\n").splitlines()
        line = re.compile(r"member (\d): (refit, )?epoch (\d)/(\d): train \d+\.\d{4} val_loss \d+\.\d{4}.*")
        ours = [m.groups() for m in map(line.fullmatch, lines) if m]
        refits = summary["refit"]["epochs_run"]
        for k, (member, refit) in enumerate(zip(summary["members"], refits, strict=True)):
            first = [(e, n) for m, r, e, n in ours if m == str(k) and r is None]
            again = [e for m, r, e, _ in ours if m == str(k) and r is not None]
            assert first == [(str(e), "2") for e in range(1, member["epochs_run"] + 1)]
            assert again == [str(e) for e in range(1, refit + 1)]
        assert not [s for s in lines if s.startswith("member") and not line.fullmatch(s)
                    and "members in" not in s and "epochs, best" not in s]

    def test_refit_is_the_cmapss_default_and_can_be_turned_off(self) -> None:
        """The C-MAPSS preset refits; --no-refit keeps the first fit's members; --refit asks for it."""
        def refit(*extra: str) -> bool:
            args = cli.build_parser().parse_args(["fit", "--history", "h.txt", "--out", "m.pt", *extra])
            return bool(cli.fit_options(args).refit)
        assert refit("--format", "cmapss") and not refit("--format", "cmapss", "--no-refit")
        assert not refit() and refit("--refit")
