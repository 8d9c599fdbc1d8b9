"""deploy/systemd: the unit passes systemd-analyze (verify and security) and fits the agent's config."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tests.deploy.tools import DEPLOY, run_tool
from tests.procs import BIN

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "vigil-agent.service"


def directives() -> dict[str, list[str]]:
    """Every `Key=value` of the unit, a key's values in file order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this checkout's vigil-agent instead of /opt/vigil."""
    text = UNIT.read_text().replace("/opt/vigil/bin/vigil-agent", str(BIN / "vigil-agent"))
    assert str(BIN / "vigil-agent") in text
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def verify_works_here(tmp_path: Path) -> None:
    """Skip when `systemd-analyze verify` cannot check even a trivial unit on this machine."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (no systemd on this machine)")
    probe = tmp_path / "vigil-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    proc = subprocess.run(["systemd-analyze", "verify", str(probe)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        pytest.skip(f"systemd-analyze verify fails on a trivial unit here: {proc.stderr.strip()[:300]}")


def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for the unit."""
    verify_works_here(tmp_path)
    proc = run_tool("systemd-analyze", "verify", str(installed_unit(tmp_path)))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's exposure at 2.0 or below ("OK")."""
    verify_works_here(tmp_path)
    proc = run_tool("systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                    str(installed_unit(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_unit_has_the_promised_settings() -> None:
    """The unit is Type=notify with a watchdog, restarts on failure, runs as `vigil` with a StateDirectory,
    and carries the hardening the deployment issue lists."""
    d = directives()
    want = {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "User": "vigil",
            "StateDirectory": "vigil", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes"}
    assert {k: d.get(k, [None])[-1] for k in want} == want
    assert d["WatchdogSec"] and d["MemoryMax"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP re-checks the model file


def test_config_matches_the_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/systemd/agent.toml validates; its password file is the unit's credential; its state
    directory is the unit's StateDirectory; ExecStart reads it from /etc/vigil."""
    d = directives()
    monkeypatch.setenv("STATE_DIRECTORY", f"/var/lib/{d['StateDirectory'][0]}")
    cfg = AgentConfig.model_validate(tomllib.loads((SYSTEMD / "agent.toml").read_text()))
    (credential,) = d["LoadCredential"]
    name = credential.split(":")[0]
    assert str(cfg.broker.password_file) == f"/run/credentials/{UNIT.name}/{name}"
    assert cfg.state.dir == Path("/var/lib/vigil") and cfg.model.path.is_relative_to(cfg.state.dir)
    assert d["ExecStart"] == ["/opt/vigil/bin/vigil-agent run --config /etc/vigil/agent.toml"]
    assert "ConfigurationDirectory" not in d  # it would chown /etc/vigil to root:root
    assert cfg.http.host_port[0] == "127.0.0.1"  # DESIGN: metrics bound to loopback by default


def test_sysusers_creates_the_unit_user() -> None:
    """The sysusers.d file creates the system user the unit runs as, homed in its state directory."""
    (line,) = [line for line in (SYSTEMD / "vigil.sysusers.conf").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    kind, name, _uid, _gecos, home, shell = shlex.split(line)
    assert (kind, name, home, shell) == ("u", directives()["User"][0], "/var/lib/vigil", "/usr/sbin/nologin")


def test_sysusers_dry_run(tmp_path: Path) -> None:
    """`systemd-sysusers --dry-run` on an empty root would create the group and user `vigil`."""
    verify_works_here(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    proc = run_tool("systemd-sysusers", f"--root={root}", "--dry-run", str(SYSTEMD / "vigil.sysusers.conf"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Creating group 'vigil'" in out and "Creating user 'vigil'" in out
    assert not (root / "etc" / "passwd").exists()
