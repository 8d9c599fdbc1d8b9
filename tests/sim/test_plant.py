"""The synthetic plant: determinism, physics, wear, failure and repair, forced failures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from agent.errors import ConfigError
from sim.plant import CHANNELS, DAY, FAILURE, HOUR, MAINTENANCE, Plant, PlantConfig, asset_name

START = 1_767_225_600.0
VIB, TEMP = CHANNELS.index("vib_rms"), CHANNELS.index("bearing_temp")


@dataclass
class Run:
    """Every step of a plant run stacked: ts [T], values [T, A, C], up and health [T, A]."""

    ts: np.ndarray
    values: np.ndarray
    up: np.ndarray
    health: np.ndarray
    events: list[tuple[float, str, str]]


def simulate(cfg: PlantConfig, days: float) -> Run:
    plant = Plant(cfg, START)
    steps, health = [], []
    for _ in range(int(days * DAY / cfg.period_s)):
        steps.append(plant.step())
        health.append(plant.health.copy())
    return Run(
        ts=np.array([s.ts for s in steps]),
        values=np.stack([s.values for s in steps]),
        up=np.stack([s.up for s in steps]),
        health=np.stack(health),
        events=[e for s in steps for e in s.events],
    )


# Short onsets so that a month holds several failures per asset.
BUSY = PlantConfig(n_assets=6, period_s=300.0, seed=3, onset_mean_s=2 * DAY)


@pytest.fixture(scope="module")
def busy_run() -> Run:
    return simulate(BUSY, 40)


class TestPlantConfig:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"n_assets": 0},
            {"n_assets": 2, "period_s": 0.0},
            {"n_assets": 2, "period_s": float("nan")},
            {"n_assets": 2, "life_min_s": 10.0, "life_max_s": 5.0},
            {"n_assets": 2, "noise": -1.0},
        ],
    )
    def test_rejects_invalid_values(self, kwargs: dict[str, float]) -> None:
        """A config with a non-positive size, period or inverted range raises ConfigError."""
        with pytest.raises(ConfigError):
            PlantConfig(**kwargs)  # type: ignore[arg-type]

    def test_asset_names(self) -> None:
        """Assets are named pump-001, pump-002, ... in index order."""
        assert PlantConfig(n_assets=3).asset_names == ("pump-001", "pump-002", "pump-003")
        assert asset_name(41) == "pump-042"


class TestDeterminism:
    def test_same_seed_same_readings(self) -> None:
        """Two plants with the same seed produce identical readings and events."""
        a = simulate(PlantConfig(n_assets=4, seed=11, period_s=600.0), 10)
        b = simulate(PlantConfig(n_assets=4, seed=11, period_s=600.0), 10)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.events == b.events

    def test_different_seed_different_readings(self) -> None:
        """Different seeds give different readings."""
        a = simulate(PlantConfig(n_assets=4, seed=11, period_s=600.0), 1)
        b = simulate(PlantConfig(n_assets=4, seed=12, period_s=600.0), 1)
        assert not np.array_equal(a.values, b.values)


class TestPhysics:
    def test_step_shapes_and_timestamps(self) -> None:
        """Each step covers every asset and channel, one period after the previous one."""
        plant = Plant(PlantConfig(n_assets=3, period_s=60.0), START)
        first, second = plant.step(), plant.step()
        assert first.values.shape == (3, len(CHANNELS))
        assert first.up.shape == (3,)
        assert (first.ts, second.ts) == (START, START + 60.0)

    def test_healthy_readings_are_plausible_and_coupled(self, busy_run: Run) -> None:
        """Healthy readings sit in pump-like ranges and pressure tracks speed squared."""
        healthy = busy_run.health == 1.0
        vals = busy_run.values[healthy]
        lows = {"bearing_temp": 5, "vib_rms": 0, "motor_current": 15, "discharge_pressure": 2,
                "speed": 1000}
        highs = {"bearing_temp": 80, "vib_rms": 80, "motor_current": 50, "discharge_pressure": 8,
                 "speed": 1500}
        for c, name in enumerate(CHANNELS):
            assert lows[name] <= vals[:, c].min() and vals[:, c].max() <= highs[name], name
        speed = vals[:, CHANNELS.index("speed")]
        pressure = vals[:, CHANNELS.index("discharge_pressure")]
        assert np.corrcoef(speed**2, pressure)[0, 1] > 0.9

    def test_health_is_read_only(self) -> None:
        """The health view cannot be written through."""
        plant = Plant(PlantConfig(n_assets=2), START)
        plant.step()
        with pytest.raises(ValueError):
            plant.health[0] = 0.5


class TestWear:
    def test_every_asset_fails_and_is_repaired(self, busy_run: Run) -> None:
        """In a long run each asset fails, sends nothing while down, then comes back repaired."""
        for i, name in enumerate(BUSY.asset_names):
            mine = [(ts, ev) for ts, a, ev in busy_run.events if a == name]
            kinds = [ev for _, ev in mine]
            assert kinds[:2] == [FAILURE, MAINTENANCE], name
            # Events alternate strictly: no second failure before the repair.
            assert all(k == (FAILURE if j % 2 == 0 else MAINTENANCE) for j, k in enumerate(kinds))
            for (failed, _), (repaired, _) in zip(mine[::2], mine[1::2], strict=False):
                down = (busy_run.ts >= failed) & (busy_run.ts < repaired)
                assert not busy_run.up[down, i].any()
                assert np.isnan(busy_run.values[down, i]).all()
                longest = BUSY.downtime_max_s + BUSY.period_s
                assert BUSY.downtime_min_s <= repaired - failed <= longest
                assert busy_run.up[busy_run.ts == repaired, i].all()

    def test_wear_raises_vibration_and_temperature_before_failure(self, busy_run: Run) -> None:
        """The last six hours before failures run hotter and shakier than healthy periods."""
        last = np.zeros_like(busy_run.up)
        for ts, name, ev in busy_run.events:
            if ev == FAILURE:
                i = BUSY.asset_names.index(name)
                last[(busy_run.ts >= ts - 6 * HOUR) & (busy_run.ts < ts), i] = True
        healthy = busy_run.health == 1.0
        vib, temp = busy_run.values[..., VIB], busy_run.values[..., TEMP]
        assert np.nanmean(vib[last]) > 1.5 * np.nanmean(vib[healthy])
        assert np.nanmean(temp[last]) > np.nanmean(temp[healthy]) + 5.0

    def test_early_wear_is_subtle(self, busy_run: Run) -> None:
        """While health is above 0.9 the mean vibration moves less than the regime spread."""
        healthy = busy_run.health == 1.0
        early = (busy_run.health < 1.0) & (busy_run.health > 0.9)
        vib = busy_run.values[..., VIB]
        shift = np.nanmean(vib[early]) - np.nanmean(vib[healthy])
        assert 0 < shift < np.nanstd(vib[healthy])


class TestForceFailure:
    @pytest.mark.parametrize("within_s", [2 * HOUR, 12 * HOUR, 2 * DAY])
    def test_fails_within_requested_time(self, within_s: float) -> None:
        """A forced asset fails within 25% of the requested simulated time."""
        cfg = PlantConfig(n_assets=3, period_s=60.0, seed=5, onset_mean_s=1000 * DAY)
        plant = Plant(cfg, START)
        plant.force_failure(1, within_s)
        failed_at = None
        for _ in range(int(1.5 * within_s / cfg.period_s)):
            step = plant.step()
            if (step.ts, "pump-002", FAILURE) in step.events:
                failed_at = step.ts
                break
        assert failed_at is not None
        assert abs((failed_at - START) - within_s) <= 0.25 * within_s

    def test_already_degrading_asset_keeps_its_health_and_fails_sooner(self) -> None:
        """Forcing a degrading asset keeps health continuous and brings failure within the time."""
        cfg = PlantConfig(n_assets=1, period_s=60.0, seed=2, onset_mean_s=60.0,
                          life_min_s=4 * DAY, life_max_s=4 * DAY)
        plant = Plant(cfg, START)
        for _ in range(int(2 * DAY / 60.0)):
            plant.step()
        before = float(plant.health[0])
        assert 0.0 < before < 1.0
        plant.force_failure(0, 3 * HOUR)
        plant.step()
        after = float(plant.health[0])
        assert abs(after - before) < 0.01
        steps = 0
        while plant.step().up[0]:
            steps += 1
        assert abs(steps * 60.0 - 3 * HOUR) <= 0.25 * 3 * HOUR

    def test_rejects_bad_arguments(self) -> None:
        """An out-of-range asset or non-positive time raises ConfigError."""
        plant = Plant(PlantConfig(n_assets=2), START)
        with pytest.raises(ConfigError):
            plant.force_failure(2, HOUR)
        with pytest.raises(ConfigError):
            plant.force_failure(0, 0.0)
