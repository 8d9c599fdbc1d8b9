"""deploy/docker: the Dockerfile passes hadolint and fits the repository and the agent.

No Docker engine here: the image is not built by these tests (docs/operate.md says how).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

from agent.config import AgentConfig
from tests.deploy.tools import DEPLOY, run_tool

DOCKER = DEPLOY / "docker"
REPO = DEPLOY.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean(tmp_path: Path) -> None:
    """hadolint reports nothing at all (not even info) on the Dockerfile, with no local config."""
    proc = run_tool("hadolint", "--no-color", "--format", "json", "--failure-threshold", "info",
                    str(DOCKER / "Dockerfile"), cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout + proc.stderr


def test_multi_stage_non_root_cpu_torch() -> None:
    """Two stages; the runtime runs as a numeric non-root user; torch is the pinned CPU build."""
    ins = instructions()
    assert len([a for i, a in ins if i == "FROM"]) == 2
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    (torch,) = [a for i, a in ins if i == "RUN" and "torch==" in a]
    assert "torch==2.13.0" in torch and "download.pytorch.org/whl/cpu" in torch


def test_healthcheck_and_volumes_match_the_config() -> None:
    """The healthcheck fetches /healthz on the port the image's config listens on; config and state
    are volumes."""
    ins = dict((i, a) for i, a in instructions() if i in {"HEALTHCHECK", "VOLUME", "EXPOSE", "ENV"})
    assert "/healthz" in ins["HEALTHCHECK"]
    assert json.loads(ins["VOLUME"]) == ["/etc/vigil", "/var/lib/vigil"]
    cfg = AgentConfig.model_validate(tomllib.loads((DOCKER / "agent.toml").read_text()))
    host, port = cfg.http.host_port
    assert host == "0.0.0.0" and ins["EXPOSE"] == str(port) and f"VIGIL_HTTP_PORT={port}" in ins["ENV"]
    assert "STATE_DIRECTORY=/var/lib/vigil" in ins["ENV"] and cfg.model.path.is_relative_to("/var/lib/vigil")


def test_copied_sources_exist_and_are_not_ignored() -> None:
    """Every COPY source (from the build context, the repository root) exists and passes the .dockerignore."""
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in ignore:  # last match wins, as in Docker
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                keep = negate
        return keep
    sources = [a.split()[:-1] for i, a in instructions() if i == "COPY" and not a.startswith("--from")]
    assert sources
    for src in (s for group in sources for s in group):
        assert (REPO / src).exists(), src
        assert included(src.rstrip("/")), f"{src} is excluded by Dockerfile.dockerignore"
