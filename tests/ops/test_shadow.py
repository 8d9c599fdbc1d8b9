"""The shadow model end to end: scored beside the live one, never published, accounted for; promote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.broker import wait_until
from tests.ops.conftest import HORIZON_S, scripted_model
from tests.procs import BIN

pytestmark = pytest.mark.integration


def test_shadow_accounting_differs_and_promote_swaps_it_in(ops_factory: Any, tmp_path: Path) -> None:
    """The live model warns (risk = x), the shadow never does (risk = 0.1): a failure after a live
    warning is a live lead time and a shadow miss; a live warning without failure is a live false
    alarm only; nothing of the shadow is published. `vigil-agent promote` then swaps it in."""
    live = tmp_path / "model.pt"
    live_spec = scripted_model(live)
    shadow = tmp_path / "candidate.pt"
    shadow_spec = scripted_model(shadow, scale=0.0, bias=0.1)
    ops = ops_factory(model=live, model_extra=f'[model.shadow]\npath = "{shadow}"\n')
    assert ops.metric("vigil_shadow_model_info", f'version="{shadow_spec.version}"') == 1

    ops.readings("warned", [0.1, 0.6], start=0)
    ops.readings("wrong", [0.1, 0.6, 0.1], start=0)
    wait_until(lambda: len(ops.alerts()) == 3, 10, what="live alerts")
    ops.event("warned", 31, "failure")
    ops.wait_metric("vigil_events_total", 'event="failure"', 1)
    assert ops.metric("vigil_alert_lead_time_seconds_sum", 'model="live"') == 30.0
    assert ops.metric("vigil_alert_lead_time_seconds_count", 'model="shadow"') == 0
    assert ops.metric("vigil_failures_missed_total", 'model="shadow"') == 1
    assert ops.metric("vigil_failures_missed_total", 'model="live"') == 0
    ops.readings("clock", [0.1, 0.1, 0.1], start=int(HORIZON_S))
    ops.wait_metric("vigil_false_alarms_total", 'model="live"', 1)
    assert ops.metric("vigil_false_alarms_total", 'model="shadow"') == 0
    assert {a["model_version"] for a in ops.alerts()} == {live_spec.version}
    assert all(r["model_version"] == live_spec.version for r in ops.capture.json(f"{ops.prefix}/risk/"))

    proc = subprocess.run([str(BIN / "vigil-agent"), "promote", "--config", str(ops.agent.config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert live.read_bytes() == shadow.read_bytes()
    assert (tmp_path / "model.pt.previous").exists()
    ops.wait_metric("vigil_model_reloads_total", 'result="success"', 1)
    assert ops.metric("vigil_model_info", f'version="{shadow_spec.version}"') == 1
    ops.readings("after", [0.9, 0.9], start=int(HORIZON_S) + 3)
    after = ops.risk_at("after", HORIZON_S + 4)
    assert after["model_version"] == shadow_spec.version and after["level"] == "ok"


def test_promote_command_topic_swaps_the_shadow_in(ops_factory: Any, tmp_path: Path) -> None:
    """`{prefix}/agents/{agent_id}/cmd/promote` does what `vigil-agent promote` does, and is counted."""
    live = tmp_path / "model.pt"
    scripted_model(live)
    shadow = tmp_path / "candidate.pt"
    shadow_spec = scripted_model(shadow, scale=0.0, bias=0.1)
    ops = ops_factory(model=live, model_extra=f'[model.shadow]\npath = "{shadow}"\n')
    ops._pub(f"{ops.prefix}/agents/gw-{ops.prefix}/cmd/promote", {}, "erin")
    ops.wait_metric("vigil_commands_total", 'command="promote",result="ok"', 1)
    ops.wait_metric("vigil_model_reloads_total", 'result="success"', 1)
    assert ops.metric("vigil_model_info", f'version="{shadow_spec.version}"') == 1
    ops.readings("pump-1", [0.9, 0.9], start=0)
    assert ops.risk_at("pump-1", 1)["model_version"] == shadow_spec.version


def test_check_config_names_the_shadow_and_promote_needs_one(tmp_path: Path) -> None:
    """check-config loads and summarises the shadow model; promote without one exits 2 with a reason."""
    live, shadow = tmp_path / "model.pt", tmp_path / "candidate.pt"
    scripted_model(live)
    shadow_spec = scripted_model(shadow, scale=0.0, bias=0.1)
    base = f'[model]\npath = "{live.name}"\n\n[[subscriptions]]\nfilter = "p/+"\ntemplate = "p/{{asset}}"\n' \
           'codec = "json-multi"\n'
    with_shadow = tmp_path / "with.toml"
    with_shadow.write_text(base.replace("\n\n", f'\n[model.shadow]\npath = "{shadow.name}"\n\n', 1))
    proc = subprocess.run([str(BIN / "vigil-agent"), "check-config", str(with_shadow)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shadow_model"]["version"] == shadow_spec.version
    without = tmp_path / "without.toml"
    without.write_text(base)
    proc = subprocess.run([str(BIN / "vigil-agent"), "promote", "--config", str(without)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no shadow model" in proc.stderr
    assert proc.stderr.count("\n") == 1
