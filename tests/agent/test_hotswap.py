"""Model hot-swap end to end: good files are taken between batches, bad ones refused."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch

from agent.runtime import read_spec
from agent.spec import METADATA_FILE, ModelSpec
from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, Capture, metric, running_agent, write_agent_config

pytestmark = pytest.mark.integration


def rewrite(src: Path, dst: Path, spec: ModelSpec, nan: bool = False) -> None:
    """Re-save a TorchScript model file with other metadata (and NaN weights if asked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        extra = {METADATA_FILE: ""}
        module = torch.jit.load(str(src), _extra_files=extra)
        if nan:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if name.endswith("forecast.bias"):
                        p.fill_(float("nan"))
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={METADATA_FILE: spec.to_json()})
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(dst)  # atomic, as a deployment tool would do


def test_bad_files_refused_good_file_swapped_windows_kept(trained: Path, broker: Broker,
                                                            tmp_path: Path) -> None:
    """A corrupt file, one with other channels and one that yields NaN are each refused while
    the old model keeps alerting; a good file is then taken between batches with windows kept."""
    model = tmp_path / "model.pt"
    model.write_bytes(trained.read_bytes())
    spec = read_spec(model)
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=model,
                                state=tmp_path / "state", http_port=port, client_id="gw-swap")
    capture = Capture(broker.port, ["vigil/alerts/#", "vigil/risk/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = subprocess.Popen(
            [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", "3", "--speed", "1200",
             "--duration", "45", "--seed", "11", "--fail", "pump-002", "--fail-within", "21600",
             "--topic-prefix", "plant"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def failures() -> float:
                return metric(agent.scrape(), "vigil_model_reloads_total", 'result="failure"') or 0.0

            bad_cases = [
                lambda: model.write_bytes(b"this is not a model"),
                lambda: rewrite(trained, model, dataclasses.replace(
                    spec, channels=tuple(f"x{i}" for i in range(spec.n_channels)))),
                lambda: rewrite(trained, model, spec, nan=True),
            ]
            for n, write_bad in enumerate(bad_cases, start=1):
                write_bad()
                wait_until(lambda n=n: failures() >= n, 15, what=f"bad model {n} refused")
            assert "model_rejected" in agent.log()
            # The old model keeps serving: the failing pump is still caught, by the old version.
            wait_until(lambda: any(a["asset"] == "pump-002" and a["level"] != "ok"
                                   for a in capture.json("vigil/alerts/")), 40, what="alert")
            assert {a["model_version"] for a in capture.json("vigil/alerts/")} == {spec.version}

            new = dataclasses.replace(spec, version="feedbeef0001")
            rewrite(trained, model, new)
            wait_until(lambda: (metric(agent.scrape(), "vigil_model_reloads_total",
                                       'result="success"') or 0) >= 1, 15, what="good model swapped")
            text = agent.scrape()
            assert metric(text, "vigil_model_info", 'version="feedbeef0001"') == 1.0
            assert metric(text, "vigil_model_info", f'version="{spec.version}"') is None
            wait_until(lambda: any(r["model_version"] == "feedbeef0001"
                                   for r in capture.json("vigil/risk/pump-001")), 15, what="new risk")
        finally:
            sim.kill()
            sim.wait()
    capture.stop()
    # Windows survived the swap: the first window scored by the new model is the very next
    # cell after the last one scored by the old model, with no warm-up gap of W cells.
    risks = [r for r in capture.json("vigil/risk/pump-001") if not r["stale"]]
    i = next(k for k, r in enumerate(risks) if r["model_version"] == "feedbeef0001")
    assert risks[i - 1]["model_version"] == spec.version
    gap = datetime.fromisoformat(risks[i]["ts"]) - datetime.fromisoformat(risks[i - 1]["ts"])
    assert gap.total_seconds() == spec.period_s, (risks[i - 1], risks[i])
