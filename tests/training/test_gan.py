"""GAN augmentation: deterministic training, shape and range, diversity, and no leak from validation/test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import tiny_options
from training.fit import fit, prepare
from training.gan import (
    SYNTHETIC_ASSET,
    GanConfig,
    TrainedGan,
    diversity,
    pre_failure,
    train_gan,
    with_synthetic,
)
from training.labels import fit_normalisation

TINY = GanConfig(hidden=8, noise=4, steps=6, critic_steps=2, batch_size=16, seed=3)


def _real(n: int = 64, w: int = 10, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(w)
    return (np.sin(0.5 * t[None, :, None] + rng.uniform(0, 6, (n, 1, c))) + 0.1 * rng.normal(size=(n, w, c))
            ).astype(np.float32)


def test_training_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same critic losses and the same windows; another seed differs."""
    real = _real()
    a, b = train_gan(real, TINY), train_gan(real, TINY)
    assert a.critic_loss == b.critic_loss and len(a.critic_loss) == TINY.steps
    np.testing.assert_array_equal(a.sample(20, seed=1), b.sample(20, seed=1))
    c = train_gan(real, replace(TINY, seed=4))
    assert not np.array_equal(a.sample(20, seed=1), c.sample(20, seed=1))


def test_windows_have_the_right_shape_and_range() -> None:
    """Generated windows are [n, W, C] and stay within the real per-channel range (5 % margin)."""
    real = _real()
    out = train_gan(real, TINY).sample(50, seed=0)
    assert out.shape == (50, 10, 3) and out.dtype == np.float32 and np.isfinite(out).all()
    lo, hi = real.min(axis=(0, 1)), real.max(axis=(0, 1))
    pad = 0.05 * (hi - lo) + 1e-6
    assert (out.min(axis=(0, 1)) >= lo - pad).all() and (out.max(axis=(0, 1)) <= hi + pad).all()


def test_diversity_detects_collapse() -> None:
    """Copies of one window are collapsed (spread 0); a fresh draw from the same law is not."""
    real = _real(200)
    collapsed = diversity(np.repeat(real[:1], 100, axis=0), real, 0)
    assert collapsed.collapsed and collapsed.spread_ratio == pytest.approx(0.0, abs=1e-6)
    fresh = diversity(_real(200)[::-1].copy() + np.float32(0.01), real, 0)
    assert not fresh.collapsed and 0.8 < fresh.spread_ratio < 1.2


def test_synthetic_windows_are_positives_without_other_targets(small_history: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    p = prepare(tiny_options(small_history, tmp_path / "m.pt"))
    norm = fit_normalisation(p.train)
    train = p.train.inputs(norm)
    synth = np.zeros((7, train.ws.window, train.z.shape[1]), dtype=np.float32) + 0.5
    aug = with_synthetic(train, synth)
    n = len(train.ws)
    assert len(aug.ws) == n + 7 and aug.ws.assets[-1] == SYNTHETIC_ASSET
    assert (aug.ws.fail[n:] == 1).all() and not aug.ws.has_target[n:].any()
    assert np.isnan(aug.ws.rul_target(100.0)[n:]).all()
    np.testing.assert_array_equal(aug.x(np.arange(n, n + 7)), synth)
    np.testing.assert_array_equal(aug.x(np.arange(0, n, 97)), train.x(np.arange(0, n, 97)))


def test_generator_never_sees_validation_or_test_assets(small_history: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`fit --augment gan` trains the generator on training assets' pre-failure windows only."""
    seen: list[np.ndarray] = []

    def spy(real: np.ndarray, cfg: GanConfig) -> TrainedGan:
        seen.append(real.copy())
        return train_gan(real, replace(cfg, hidden=8, noise=4, critic_steps=1, batch_size=16))

    monkeypatch.setattr("training.fit.train_gan", spy)
    opts = replace(tiny_options(small_history, tmp_path / "g.pt"), augment="gan", gan_steps=3,
                   gan_factor=0.5, test_fraction=0.2, val_fraction=0.2)
    spec, summary = fit(opts)
    aug = summary["augment"]
    assert set(aug["source_assets"]) <= set(summary["train_assets"])
    assert not set(aug["source_assets"]) & (set(summary["val_assets"]) | set(summary["test_assets"]))
    assert aug["windows"] == round(0.5 * aug["real_windows"]) and "spread_ratio" in aug
    assert spec.metrics["gan_windows"] == aug["windows"]
    # The windows handed to the generator are exactly the training split's pre-failure windows.
    p = prepare(opts)
    held_out = np.concatenate([p.val.x(np.flatnonzero(p.val.fail == 1), spec.normalisation),
                               p.test.x(np.flatnonzero(p.test.fail == 1), spec.normalisation)])
    want, names = pre_failure(p.train.inputs(spec.normalisation))
    assert len(seen) == 1 and set(names) == set(aug["source_assets"])
    np.testing.assert_array_equal(seen[0], want)
    got = {w.tobytes() for w in seen[0]}
    assert not any(w.tobytes() in got for w in held_out)
