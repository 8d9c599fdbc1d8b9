"""fit -> export -> inspect / evaluate, reproducibility and the CLI's error handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.errors import ModelError
from agent.runtime import load_model
from agent.spec import ModelSpec
from tests.training.conftest import tiny_options
from training import cli
from training.evaluate import evaluate
from training.export import export
from training.fit import fit
from training.model import Forecaster, ModelConfig


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


class TestExport:
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
        assert cli.main(["fit", "--history", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.pt")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no such file" in err
        junk = tmp_path / "junk.pt"
        junk.write_bytes(b"not a model")
        assert cli.main(["inspect", str(junk)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vigil-train: error:") and "TorchScript" in err
