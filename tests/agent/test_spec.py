"""The model-file contract: ModelSpec JSON round trip, validation, and the content-hash version."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from agent.errors import ModelError
from agent.spec import SCHEMA_VERSION, ModelSpec, Normalisation, Thresholds, spec_summary
from tests.agent.conftest import make_spec


def raw() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(make_spec().to_json())
    return doc


def parse(doc: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_json(json.dumps(doc))


class TestModelSpecJson:
    def test_round_trip(self) -> None:
        """to_json then from_json gives an equal spec."""
        spec = replace(make_spec(), metrics={"auc": 0.9}, version="abc")
        assert ModelSpec.from_json(spec.to_json()) == spec

    def test_round_trip_from_bytes(self) -> None:
        """from_json also takes the bytes read from a model file."""
        spec = make_spec()
        assert ModelSpec.from_json(spec.to_json().encode()) == spec

    def test_canonical_json(self) -> None:
        """The stored form has sorted keys and the schema version."""
        text = make_spec().to_json()
        doc = json.loads(text)
        assert list(doc) == sorted(doc)
        assert doc["schema_version"] == SCHEMA_VERSION

    def test_wrong_schema_version(self) -> None:
        """A file of another schema version is refused, naming both versions."""
        doc = raw()
        doc["schema_version"] = SCHEMA_VERSION + 1
        with pytest.raises(ModelError, match=f"schema_version {SCHEMA_VERSION + 1}"):
            parse(doc)

    def test_missing_schema_version(self) -> None:
        """Metadata without a schema version is refused."""
        doc = raw()
        del doc["schema_version"]
        with pytest.raises(ModelError, match="schema_version None"):
            parse(doc)

    def test_missing_field(self) -> None:
        """A missing required field is refused, naming the field."""
        doc = raw()
        del doc["channels"]
        with pytest.raises(ModelError, match="channels"):
            parse(doc)

    def test_wrong_type(self) -> None:
        """A field of the wrong type is refused, naming the field."""
        doc = raw()
        doc["window"] = "eight"
        with pytest.raises(ModelError, match="window"):
            parse(doc)

    def test_channels_not_unique(self) -> None:
        """Repeated channel names are refused."""
        doc = raw()
        doc["channels"] = ["temp", "temp", "press"]
        with pytest.raises(ModelError, match="unique"):
            parse(doc)

    def test_thresholds_out_of_order(self) -> None:
        """A warning threshold above the critical one is refused."""
        doc = raw()
        doc["thresholds"]["warning"], doc["thresholds"]["critical"] = 0.9, 0.5
        with pytest.raises(ModelError, match="warning <= critical"):
            parse(doc)

    @pytest.mark.parametrize("text", ["not json", b"\xff\xfe", "[1, 2]", "null"])
    def test_not_a_json_object(self, text: str | bytes) -> None:
        """Text that is not a JSON object is refused with ModelError."""
        with pytest.raises(ModelError):
            ModelSpec.from_json(text)


class TestModelSpecValidation:
    @pytest.mark.parametrize(("change", "words"), [
        ({"channels": ()}, "channels"),
        ({"channels": ("a/b", "c", "d")}, "channels"),
        ({"period_s": 0.0}, "period_s"),
        ({"window": 1}, "window"),
        ({"heads": ("forecast_mean",)}, "fail_prob or both"),
        ({"heads": ("fail_prob", "magic")}, "unknown heads"),
        ({"normalisation": Normalisation((0.0,) * 3, (1.0, 0.0, 1.0))}, "std"),
        ({"normalisation": Normalisation((0.0,), (1.0,))}, "per channel"),
        ({"thresholds": Thresholds(0.5, 0.8, hysteresis=0.6)}, "hysteresis"),
        ({"thresholds": Thresholds(0.5, 0.8, dwell=0)}, "dwell"),
    ])
    def test_invalid_spec_is_refused(self, change: dict[str, Any], words: str) -> None:
        """A spec that breaks the contract raises ModelError naming the problem."""
        with pytest.raises(ModelError, match=words):
            replace(make_spec(), **change)

    def test_horizon_seconds(self) -> None:
        """horizon_s is the failure horizon in seconds."""
        spec = make_spec()
        assert spec.horizon_s == spec.fail_horizon * spec.period_s
        assert spec_summary(spec)["horizon_s"] == spec.horizon_s


class TestWithVersion:
    def test_deterministic(self) -> None:
        """The same weights and metadata give the same version."""
        assert make_spec().with_version(b"w").version == make_spec().with_version(b"w").version

    def test_changes_with_weights(self) -> None:
        """Different weights give a different version."""
        assert make_spec().with_version(b"w1").version != make_spec().with_version(b"w2").version

    def test_changes_with_metadata(self) -> None:
        """Different metadata (thresholds) give a different version for the same weights."""
        other = replace(make_spec(), thresholds=Thresholds(0.6, 0.8))
        assert other.with_version(b"w").version != make_spec().with_version(b"w").version

    def test_ignores_an_earlier_version(self) -> None:
        """Re-versioning a versioned spec gives the same version (the old one is not hashed)."""
        once = make_spec().with_version(b"w")
        assert once.with_version(b"w").version == once.version
        assert len(once.version) == 12


def regimes() -> Normalisation:
    """Two operating regimes told apart by channel 0 (near 0 or near 100)."""
    return Normalisation(
        mean=(50.0, 0.0, 0.0), std=(50.0, 1.0, 1.0),
        regime_channels=(0,), regime_scale=(1.0,), regime_centres=((0.0,), (100.0,)),
        regime_mean=((0.0, 10.0, 0.0), (100.0, 20.0, 0.0)),
        regime_std=((1.0, 2.0, 1.0), (1.0, 4.0, 1.0)))


class TestNormalise:
    def test_global_affine(self) -> None:
        """Without regimes, normalise is (x - mean) / std per channel, as float32."""
        spec = replace(make_spec(), normalisation=Normalisation((1.0, 1.0, 1.0), (1.0, 2.0, 4.0)))
        out = spec.normalise(np.array([[[1.0, 2.0, 3.0]]]))
        assert out.dtype == np.float32
        assert out.tolist() == [[[0.0, 0.5, 0.5]]]

    def test_regimes_pick_the_nearest_centre(self) -> None:
        """Each cell uses the mean and std of its nearest regime; the regime channel becomes its code."""
        spec = replace(make_spec(), normalisation=regimes())
        out = spec.normalise(np.array([[3.0, 12.0, 1.0], [97.0, 28.0, 1.0]]))
        assert out.tolist() == [[-1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]

    def test_regimes_round_trip(self) -> None:
        """A spec with regimes survives the JSON round trip."""
        spec = replace(make_spec(), normalisation=regimes())
        assert ModelSpec.from_json(spec.to_json()) == spec

    def test_bad_regimes_refused(self) -> None:
        """Regime tables of the wrong shape are refused."""
        with pytest.raises(ModelError, match="regime"):
            replace(make_spec(), normalisation=replace(regimes(), regime_std=((1.0, 1.0, 1.0),)))
