"""Promotion by evidence, end to end: a shadow that did at least as well over its trial is
promoted, the model it replaced stands guard, and a promotion that does worse is rolled back."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.broker import wait_until
from tests.ops.conftest import scripted_model

pytestmark = pytest.mark.integration

TRIAL = "[learn]\ntrial = 90\n"


def decisions(state: Path) -> list[dict[str, Any]]:
    path = state / "models" / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def drive(ops: Any, start: int, done: Callable[[], bool], limit: int = 600) -> int:
    """A quiet plant (x = 0.1), ten cells at a time from cell `start`, until `done()`: event time
    moves on as long as the test waits. Only a biased model alarms on it. Returns the next cell."""
    k = start
    while not done():
        if k - start >= limit:
            raise TimeoutError(f"not done after {limit} cells of event time")
        k = ops.readings("pump-1", [0.1] * 10, start=k)
        ops.risk_at("pump-1", k - 1)
    return k


def test_a_better_shadow_is_promoted_and_the_old_model_stands_guard(ops_factory: Any, tmp_path: Path) -> None:
    """Live alarms on a quiet plant (a false alarm once its horizon passes); the shadow does
    not. After the trial the shadow is promoted (reason trial), the replaced model becomes the
    guard shadow, and once the guard's trial shows the promotion did no worse it is dropped."""
    live, good = tmp_path / "model.pt", tmp_path / "good.pt"
    bad_spec = scripted_model(live, bias=0.6)       # risk 0.7 on a quiet plant: a warning
    good_spec = scripted_model(good)
    shadow = tmp_path / "state" / "models" / "shadow.pt"
    shadow.parent.mkdir(parents=True)
    shutil.copyfile(good, shadow)
    ops = ops_factory(extra=TRIAL, model=live)
    assert ops.metric("vigil_shadow_model_info", f'version="{good_spec.version}"') == 1
    drive(ops, 100, lambda: ops.metric("vigil_model_promotions_total", 'reason="trial"') >= 1)
    assert ops.metric("vigil_false_alarms_total", 'model="live"') >= 1
    wait_until(lambda: ops.metric("vigil_model_info", f'version="{good_spec.version}"') == 1, 10,
               what="the promoted model serving")
    assert live.read_bytes() == good.read_bytes()
    wait_until(lambda: ops.metric("vigil_shadow_model_info", f'version="{bad_spec.version}"') == 1, 10,
               what="the replaced model as the guard shadow")
    health = ops.health() or {}
    wait_until(lambda: ((ops.health() or {}).get("trial") or {}).get("role") == "guard", 10,
               what="guard trial")
    assert health.get("mode") == "serving"

    drive(ops, 100, lambda: [d.get("result") for d in decisions(ops.state) if d["kind"] == "trial"]
          == ["promote", "kept"])  # the guard's trial: the promoted model does no worse
    assert ops.metric("vigil_model_rollbacks_total") == 0
    wait_until(lambda: not shadow.exists(), 10, what="the guard dropped")
    kinds = [d["kind"] for d in decisions(ops.state)]
    assert kinds == ["trial", "promotion", "trial"], kinds
    assert [(d["reason"], d["version"]) for d in decisions(ops.state) if d["kind"] == "promotion"] == [
        ("trial", good_spec.version)]


def test_a_forced_promotion_that_does_worse_is_rolled_back(ops_factory: Any, tmp_path: Path) -> None:
    """The operator promotes a model that alarms on a quiet plant; over the guard's trial it does
    worse than the model it replaced, which is restored: the live file is the old one again,
    `vigil_model_rollbacks_total` counts it and the decision is on record."""
    live, bad = tmp_path / "model.pt", tmp_path / "bad.pt"
    good_spec = scripted_model(live)
    bad_spec = scripted_model(bad, bias=0.6)
    good_bytes = live.read_bytes()
    shadow = tmp_path / "state" / "models" / "shadow.pt"
    shadow.parent.mkdir(parents=True)
    shutil.copyfile(bad, shadow)
    ops = ops_factory(extra=TRIAL, model=live)
    reply = ops.request(f"{ops.prefix}/agents/gw-{ops.prefix}/cmd/promote", {}, b"p1", sender="erin")
    assert (reply["result"], reply["version"]) == ("ok", bad_spec.version)
    ops.wait_metric("vigil_model_promotions_total", 'reason="operator"', 1)
    wait_until(lambda: ops.metric("vigil_model_info", f'version="{bad_spec.version}"') == 1, 10,
               what="the forced model serving")
    wait_until(lambda: ops.metric("vigil_shadow_model_info", f'version="{good_spec.version}"') == 1, 10,
               what="the replaced model standing guard")
    drive(ops, 0, lambda: ops.metric("vigil_model_rollbacks_total") >= 1)
    wait_until(lambda: ops.metric("vigil_model_info", f'version="{good_spec.version}"') == 1, 10,
               what="the old model serving again")
    assert live.read_bytes() == good_bytes
    rollback = [d for d in decisions(ops.state) if d["kind"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["version"] == good_spec.version
    assert rollback[0]["replaced"] == bad_spec.version and "false alarms" in rollback[0]["reason"]
    assert any(e["event"] == "model_rolled_back" for e in _log(ops))


def _log(ops: Any) -> list[dict[str, Any]]:
    out = []
    for line in ops.agent.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
