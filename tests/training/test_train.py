"""The training loop: reproducible on the CPU, checkpoints that resume the same run, RUL early stopping."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.errors import ModelError
from tests.training.tiny import run_to_failure
from training import checkpoint as ckpt
from training.labels import Inputs
from training.model import Ensemble, Forecaster, ModelConfig, ewma
from training.train import TrainConfig, train


def tiny_data() -> tuple[Inputs, Inputs]:
    """Six run-to-failure assets whose two channels drift towards failure; 4 train, 2 validation."""
    return run_to_failure(6, 60, 10, 0, lambda a: a < 4)


def new_model() -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=2, horizon=2, hidden=8, rul_head=True, rul_cap=30.0))


CFG = TrainConfig(epochs=4, batch_size=32, lr=5e-3, patience=10, seed=3, progress=False, input_noise=0.05,
                  ema=0.9)


def weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class TestTrain:
    def test_same_seed_same_weights(self) -> None:
        """Two runs with the same seed end with identical weights; another seed differs."""
        tr, va = tiny_data()
        a, b, c = new_model(), new_model(), new_model()
        train(a, tr, va, CFG, 30.0)
        train(b, tr, va, CFG, 30.0)
        train(c, tr, va, TrainConfig(**{**CFG.__dict__, "seed": 4}), 30.0)
        wa, wb, wc = weights(a), weights(b), weights(c)
        assert all(np.array_equal(wa[k], wb[k]) for k in wa)
        assert not all(np.array_equal(wa[k], wc[k]) for k in wa)

    def test_rul_head_early_stops_on_rul_rmse(self) -> None:
        """With an RUL head the validation score is the RUL RMSE in cells, recorded every epoch."""
        tr, va = tiny_data()
        result = train(new_model(), tr, va, CFG, 30.0)
        assert [r["epoch"] for r in result.curve] == [1, 2, 3, 4]
        best = min(r["val_rul_rmse"] for r in result.curve)
        assert result.best_score == pytest.approx(best)
        assert 0 < best < 30

    def test_run_epochs_keeps_the_last_weights_of_the_same_schedule(self) -> None:
        """run_epochs=N trains the first N epochs of the schedule planned for `epochs`, exactly as a full
        run does, and keeps the last weights whatever validation says (the refit of all assets)."""
        tr, va = tiny_data()
        full = train(new_model(), tr, va, CFG, 30.0)
        short = train(new_model(), tr, va, replace(CFG, run_epochs=2), 30.0)
        assert short.epochs_run == 2 and short.best_epoch == 2
        assert [(r["train_loss"], r["lr"]) for r in short.curve] == [(r["train_loss"], r["lr"])
                                                                     for r in full.curve[:2]]
        assert short.best_score == short.curve[-1]["val_rul_rmse"]
        worse_late = replace(CFG, run_epochs=4, patience=1, lr=0.5)  # would stop early without run_epochs
        assert train(new_model(), tr, va, worse_late, 30.0).epochs_run == 4
        with pytest.raises(ValueError, match="run_epochs"):
            train(new_model(), tr, va, replace(CFG, run_epochs=5), 30.0)


class TestCheckpoint:
    def test_resume_continues_the_same_run(self, tmp_path: Path) -> None:
        """Stopping after 2 epochs and resuming gives exactly the weights of an uninterrupted 4-epoch run."""
        tr, va = tiny_data()
        straight = new_model()
        full = train(straight, tr, va, CFG, 30.0)
        path = tmp_path / "run.ckpt"
        first = new_model()
        part = train(first, tr, va, TrainConfig(**{**CFG.__dict__, "stop_after": 2}), 30.0,
                     checkpoint=path, contract={"channels": ["x", "y"]})
        assert not part.finished and part.epochs_run == 2
        doc = ckpt.read(path)
        assert doc["epoch"] == 2 and doc["step"] > 0 and doc["contract"] == {"channels": ["x", "y"]}
        assert {"model", "optimizer", "scheduler", "best_score", "model_config", "train_config"} <= set(doc)
        resumed = new_model()
        rest = train(resumed, tr, va, CFG, 30.0, checkpoint=path, resume=True)
        assert rest.finished and rest.epochs_run == 4
        assert [r["val_loss"] for r in rest.curve] == [r["val_loss"] for r in full.curve]
        ws, wr = weights(straight), weights(resumed)
        assert all(np.array_equal(ws[k], wr[k]) for k in ws)

    def test_rebuild_from_the_file_alone(self, tmp_path: Path) -> None:
        """A checkpoint rebuilds the best model from its stored constructor arguments."""
        tr, va = tiny_data()
        model = new_model()
        train(model, tr, va, CFG, 30.0, checkpoint=tmp_path / "c.ckpt", contract={"window": 8})
        again, contract = ckpt.rebuild(tmp_path / "c.ckpt")
        x = torch.from_numpy(va.x(np.arange(5)))
        with torch.no_grad():
            assert torch.equal(model(x)["rul"], again(x)["rul"])
        assert contract == {"window": 8}

    def test_checkpoint_of_another_model_is_refused(self, tmp_path: Path) -> None:
        """Resuming into a model of another shape fails with a clear error, not a tensor mismatch."""
        tr, va = tiny_data()
        path = tmp_path / "c.ckpt"
        train(new_model(), tr, va, TrainConfig(**{**CFG.__dict__, "stop_after": 1}), 30.0, checkpoint=path)
        other = Forecaster(ModelConfig(n_channels=2, horizon=2, hidden=16, rul_head=True, rul_cap=30.0))
        with pytest.raises(ModelError, match="made for model"):
            train(other, tr, va, CFG, 30.0, checkpoint=path, resume=True)

    def test_checkpoint_from_before_a_model_field_resumes_at_its_default(self, tmp_path: Path) -> None:
        """A checkpoint written before `pool` existed resumes a model at the default ("last"), not one
        with attention."""
        tr, va = tiny_data()
        path = tmp_path / "c.ckpt"
        train(new_model(), tr, va, replace(CFG, stop_after=1), 30.0, checkpoint=path)
        doc = ckpt.read(path)
        del doc["model_config"]["pool"]
        torch.save(doc, path)
        assert train(new_model(), tr, va, CFG, 30.0, checkpoint=path, resume=True).epochs_run == 4
        attending = Forecaster(replace(new_model().config, pool="attention"))
        with pytest.raises(ModelError, match="made for model"):
            train(attending, tr, va, CFG, 30.0, checkpoint=path, resume=True)
        doc["model_config"]["lens"] = "wide"  # a field from a newer version: a clear refusal
        torch.save(doc, path)
        with pytest.raises(ModelError, match="not one this version can build"):
            train(new_model(), tr, va, CFG, 30.0, checkpoint=path, resume=True)


class TestModelParts:
    def test_ewma_is_causal_exponential_smoothing(self) -> None:
        """The in-model smoothing equals the recursion s_t = a x_t + (1 - a) s_(t-1), s_0 = x_0."""
        x = torch.randn(3, 9, 2)
        got = ewma(x, 0.3)
        s = x[:, 0]
        for t in range(9):
            s = x[:, 0] if t == 0 else 0.3 * x[:, t] + 0.7 * s
            assert torch.allclose(got[:, t], s, atol=1e-6)

    def test_ensemble_averages_members_and_exports_with_parity(self, tmp_path: Path) -> None:
        """An ensemble's failure logit is its members' mean, its RUL the mean of theirs within the cap;
        its TorchScript file matches eager."""
        from tests.agent.conftest import make_spec
        from training.export import export

        members = []
        for k in range(3):
            torch.manual_seed(k)
            members.append(Forecaster(ModelConfig(n_channels=3, horizon=2, hidden=8, rul_head=True,
                                                  rul_cap=40.0, smooth=0.2)))
        ens = Ensemble(members).eval()
        x = torch.randn(5, 8, 3)
        with torch.no_grad():
            _, _, logit, rul = ens.heads(x)
            parts = [m.heads(x) for m in members]
        assert torch.allclose(logit, torch.stack([p[2] for p in parts]).mean(0))
        assert torch.allclose(rul, torch.stack([p[3].clamp(0.0, 1.0) for p in parts]).mean(0))
        spec = replace(make_spec(), heads=("forecast_mean", "forecast_logvar", "fail_prob", "rul"),
                       rul_cap=40.0)
        export(ens, spec, x.numpy(), tmp_path / "e.pt")
        from agent.runtime import load_model

        out = load_model(tmp_path / "e.pt").infer(x.numpy())
        with torch.no_grad():
            eager = ens(x)
        assert out.rul is not None and np.abs(out.rul - eager["rul"].numpy()).max() <= 1e-5
