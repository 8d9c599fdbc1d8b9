"""Fixtures for the deploy/ checks: one live agent, fed by the simulator, for the real tools to scrape."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, AgentProcess, metric, write_agent_config

ASSETS = ("pump-001", "pump-002", "pump-003")
TOP_ASSETS, TOP_LIMIT = 8, 3  # the top_agent's fleet, and how many of its assets get their own series


def isolated_config(path: Path, *, broker_url: str, model: Path, state: Path, http_port: int,
                    name: str) -> Path:
    """An agent config on topics of its own (`{name}/+/+` in, `vigil-{name}/...` out) and client id
    `gw-{name}`, so it neither hears nor disturbs other tests on the session broker."""
    config = write_agent_config(path, broker_url=broker_url, model=model, state=state,
                                http_port=http_port, client_id=f"gw-{name}")
    text = config.read_text()
    for old, new in (('"plant/+/+"', f'"{name}/+/+"'),
                     ('"plant/{asset}/{channel}"', f'"{name}/{{asset}}/{{channel}}"'),
                     ('prefix = "vigil"', f'prefix = "vigil-{name}"')):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return config


@dataclass
class LiveAgent:
    """A running `vigil-agent` scoring the simulator's assets, for the tools to scrape."""

    agent: AgentProcess
    assets: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.agent.http_port}"

    def scrape(self) -> str:
        return self.agent.scrape()


@contextmanager
def live(trained: Path, broker: Broker, d: Path, name: str, assets: int,
         metrics: str) -> Iterator[AgentProcess]:
    """An agent on topics of its own, fed by `vigil-sim live` with `assets` pumps until every one
    of them has a risk (counted by the fleet series, whatever `[metrics]` exports per asset)."""
    port = free_port()
    config = isolated_config(d / "agent.toml", broker_url=broker.url, model=trained, state=d / "state",
                             http_port=port, name=name)
    config.write_text(config.read_text() + f"\n[metrics]\n{metrics}\n")
    agent = AgentProcess(config, port, d / "agent.log")
    agent.start()
    sim: subprocess.Popen[bytes] | None = None
    try:
        agent.wait_ready()
        sim = subprocess.Popen(
            [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", str(assets),
             "--topic-prefix", name, "--speed", "600", "--duration", "600", "--seed", "7"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def scored() -> bool:
            text = agent.scrape()
            with_risk = sum(metric(text, "vigil_assets_by_level", f'level="{lv}"') or 0
                            for lv in ("ok", "warning", "critical"))
            return with_risk == assets and (metric(text, "vigil_reading_to_risk_seconds_count") or 0) > 0
        wait_until(scored, 60, interval=0.2, what="a risk for every simulated asset")
        yield agent
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(10)
        agent.kill()


@pytest.fixture(scope="module")
def live_agent(trained: Path, broker: Broker,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    """One agent per test module exporting every asset's series, fed live by `vigil-sim live`.

    Module scope: the simulator's load stops before other packages' timing-sensitive tests run.
    """
    with live(trained, broker, tmp_path_factory.mktemp("live-agent"), "deploy", len(ASSETS),
              'per_asset = "all"') as agent:
        assert all(metric(agent.scrape(), "vigil_asset_risk", f'asset="{a}"') is not None for a in ASSETS)
        yield LiveAgent(agent, ASSETS)


@pytest.fixture(scope="module")
def top_agent(trained: Path, broker: Broker,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    """An agent of TOP_ASSETS pumps exporting the series of only TOP_LIMIT of them (the default
    `per_asset = "top"` with a small limit), fed live by `vigil-sim live`."""
    assets = tuple(f"pump-{i:03d}" for i in range(1, TOP_ASSETS + 1))
    with live(trained, broker, tmp_path_factory.mktemp("top-agent"), "deploytop", TOP_ASSETS,
              f"per_asset_limit = {TOP_LIMIT}") as agent:
        yield LiveAgent(agent, assets)
