"""Months of varying batch sizes must not grow the agent: the runtimes see a bounded set of shapes.

oneDNN keeps a primitive per input shape and never frees it (about 0.5 MiB each for the
reference LSTM; ~120 MiB once every batch size up to 256 was seen, found by bench/soak.py).
Batches are padded to a few bucket sizes; these tests fail without that.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime import FloatArray, Outputs, bucket, load_model
from agent.runtime_onnx import load_onnx
from tests.perf.conftest import Pair

MAX_BATCH = 256


@given(st.integers(min_value=1, max_value=1 << 16))
def test_bucket_holds_the_batch_with_less_than_half_more(n: int) -> None:
    b = bucket(n)
    assert n <= b < max(n + 1, 1.5 * n)


def test_few_shapes_up_to_the_max_batch() -> None:
    shapes = {bucket(n) for n in range(1, MAX_BATCH + 1)}
    assert MAX_BATCH in shapes
    assert len(shapes) <= 2 * math.log2(MAX_BATCH)


def _record(runtime: object) -> list[int]:
    """Wrap the runtime's own model call so the batch sizes it is given are recorded."""
    seen: list[int] = []
    inner: Callable[[FloatArray], Outputs] = runtime._infer  # type: ignore[attr-defined]

    def spy(x: FloatArray) -> Outputs:
        seen.append(len(x))
        return inner(x)
    runtime._infer = spy  # type: ignore[attr-defined]
    return seen


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_runtime_sees_bounded_shapes_and_same_outputs(pair: Pair, kind: str) -> None:
    """Every batch size from 1 to 256 reaches the model as one of at most 16 shapes, and each
    window's outputs are what it gets scored alone (padding never leaks into a real row)."""
    rt = load_model(pair.pt) if kind == "torchscript" else load_onnx(pair.onnx)
    shape = (MAX_BATCH, rt.spec.window, rt.spec.n_channels)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    alone = [rt.infer(x[i : i + 1]) for i in (0, 5, 99)]
    seen = _record(rt)
    for n in range(1, MAX_BATCH + 1):
        out = rt.infer(x[:n])
        assert out.fail_prob is not None and out.fail_prob.shape == (n,)
        assert out.forecast_mean is not None and len(out.forecast_mean) == n
    assert len(set(seen)) <= 16, sorted(set(seen))
    out = rt.infer(x[:100])
    for i, a in zip((0, 5, 99), alone, strict=True):
        assert out.fail_prob is not None and a.fail_prob is not None
        np.testing.assert_allclose(out.fail_prob[i], a.fail_prob[0], atol=1e-5)

