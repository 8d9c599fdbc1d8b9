"""A model file with the LSTM-VAE anomaly head: served in the same batch, its signal in the risk payload."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.names import BrokerURL
from agent.risk import anomaly_probability, combine
from agent.runtime import load_model
from agent.spec import AnomalyStats, Combiner, ModelSpec
from sim.publisher import Publisher, PublisherOptions
from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec
from tests.agent.test_pipeline import Harness, config, warm
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, running_agent, write_agent_config
from training.export import export
from training.model import Forecaster, ModelConfig
from training.vae import LstmVae, VaeConfig, WithAnomaly

HEADS = ("forecast_mean", "forecast_logvar", "fail_prob", "anomaly_nll")


@pytest.fixture(scope="module")
def vae_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    torch.manual_seed(0)
    base = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8))
    vae = LstmVae(VaeConfig(n_channels=len(CHANNELS), hidden=8, latent=2))
    spec = replace(make_spec(), heads=HEADS, anomaly=AnomalyStats(tuple(np.linspace(0.0, 3.0, 11))),
                   combiner=Combiner(w_fail=1.0, w_surprise=0.5, bias=0.0, w_anomaly=2.0))
    probe = np.random.default_rng(0).normal(size=(4, WINDOW, len(CHANNELS))).astype(np.float32)
    path = tmp_path_factory.mktemp("vae") / "vae.pt"
    return path, export(WithAnomaly(base, vae), spec, probe, path)


def test_anomaly_signal_joins_the_risk(vae_model: tuple[Path, ModelSpec], tmp_path: Path) -> None:
    """The pipeline turns anomaly_nll into a probability and combines it with the failure probability."""
    path, spec = vae_model
    h = Harness(config(tmp_path, path), load_model(path))
    doc = warm(h, "p1").risks[0].doc
    signals = doc["signals"]
    assert set(signals) == {"fail_prob", "anomaly", "surprise"}
    assert signals["surprise"] is None  # one window: no earlier forecast to be surprised by
    x = np.full((1, WINDOW, len(CHANNELS)), 0.0)
    x[:] = (0.1, 0.2, 0.3)
    out = load_model(path).infer(spec.normalise(x))
    assert out.anomaly_nll is not None
    assert spec.anomaly is not None
    p_anomaly = anomaly_probability(float(out.anomaly_nll[0]), spec.anomaly)
    assert signals["anomaly"] == pytest.approx(p_anomaly, abs=1e-6)
    want = combine(signals["fail_prob"], None, spec.combiner, p_anomaly)
    assert doc["risk"] == pytest.approx(want, abs=1e-5)


def test_combine_weighs_the_anomaly_signal() -> None:
    """w_anomaly 0 (every older file) ignores the signal; a positive weight raises risk with it."""
    c = Combiner(w_fail=1.0, w_surprise=1.0, bias=0.0)
    assert combine(0.3, None, c, 0.99) == pytest.approx(combine(0.3, None, c))
    on = replace(c, w_anomaly=1.0)
    assert combine(0.3, None, on, 0.99) > combine(0.3, None, on, 0.5) == pytest.approx(0.3)


@pytest.mark.integration
def test_agent_publishes_the_anomaly_signal(vae_model: tuple[Path, ModelSpec], broker: Broker,
                                            tmp_path: Path) -> None:
    """`vigil-agent run` serves a model file with the VAE head; the retained risk carries `anomaly`."""
    path, spec = vae_model
    port = free_port()
    cfg = write_agent_config(tmp_path / "a.toml", broker_url=broker.url, model=path,
                             state=tmp_path / "state", http_port=port, client_id="gw-vae")
    cfg.write_text(cfg.read_text().replace('"plant/+/+"', '"vaee2e/+/+"')
                   .replace('"plant/{asset}', '"vaee2e/{asset}'))
    capture = Capture(broker.port, ["vigil/risk/vae-pump"]).start()
    t0 = time.time() - 600
    with running_agent(cfg, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        with Publisher(PublisherOptions(BrokerURL.parse(broker.url), "vae-pub")) as pub:
            for k in range(WINDOW + 3):
                for i, ch in enumerate(CHANNELS):
                    pub.publish(f"vaee2e/vae-pump/{ch}", json.dumps({"ts": t0 + 10 * k + 1,
                                                                     "value": 0.1 * i}).encode())
            assert pub.drain(10)
        wait_until(lambda: len(capture.json("vigil/risk/")) >= 3, 30, what="risk messages")
        assert agent.terminate() == 0
    capture.stop()
    doc = capture.json("vigil/risk/")[-1]
    assert doc["model_version"] == spec.version
    assert 0.0 <= doc["signals"]["anomaly"] <= 1.0 and {"fail_prob", "surprise"} <= set(doc["signals"])


def test_spec_refuses_an_anomaly_head_without_its_statistics() -> None:
    from agent.errors import ModelError

    with pytest.raises(ModelError, match="anomaly_nll head needs anomaly statistics"):
        replace(make_spec(), heads=HEADS)
    with pytest.raises(ModelError, match="anomaly_nll head needs anomaly statistics"):
        replace(make_spec(), anomaly=AnomalyStats((0.0, 1.0)))
