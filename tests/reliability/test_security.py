"""TLS with a CA made at test time, and username/password: right credentials connect, wrong
ones are refused with a clear error and no crash loop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import http_get, running_agent, write_agent_config

pytestmark = pytest.mark.integration


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for `localhost`."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vigil-test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
            str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"),
            "-out", str(d / "server.crt"))
    (d / "server.key").chmod(0o644)  # mosquitto may drop privileges before reading it
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture
def secure_broker(pki: dict[str, Path], tmp_path: Path) -> Broker:
    pw = tmp_path / "passwd"
    pw.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "gateway", "s3cret-pass"], check=True)
    pw.chmod(0o644)
    b = Broker(tmp_path / "mq", password_file=pw, tls=(pki["ca"], pki["cert"], pki["key"]))
    b.start()
    yield b  # type: ignore[misc]
    b.stop()


def config_for(broker: Broker, model: Path, tmp: Path, ca: Path, password: str, port: int) -> Path:
    cfg = write_agent_config(tmp / "agent.toml", broker_url=broker.url, model=model,
                             state=tmp / "state", http_port=port, client_id="gw-tls")
    (tmp / "pw").write_text(password + "\n")
    text = cfg.read_text().replace(
        'client_id = "gw-tls"\n',
        f'client_id = "gw-tls"\nusername = "gateway"\npassword_file = "{tmp / "pw"}"\n'
        f'[broker.tls]\nca_file = "{ca}"\n')
    cfg.write_text(text)
    return cfg


def test_right_credentials_connect_over_tls(trained: Path, secure_broker: Broker, pki: dict[str, Path],
                                            tmp_path: Path) -> None:
    """With the CA, the user and the password from a file, the agent connects over TLS."""
    port = free_port()
    cfg = config_for(secure_broker, trained, tmp_path, pki["ca"], "s3cret-pass", port)
    with running_agent(cfg, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        assert agent.terminate() == 0
    assert "s3cret-pass" not in agent.log()


def test_wrong_password_refused_without_crash_loop(trained: Path, secure_broker: Broker,
                                                   pki: dict[str, Path], tmp_path: Path) -> None:
    """A wrong password: not ready, a clear refusal in the log (not repeated on every retry),
    the process stays up, and SIGTERM still exits 0."""
    port = free_port()
    cfg = config_for(secure_broker, trained, tmp_path, pki["ca"], "wrong", port)
    with running_agent(cfg, port, tmp_path / "agent.log") as agent:
        wait_until(lambda: "mqtt_connect_refused" in agent.log(), 15, what="refusal logged")
        wait_until(lambda: http_get(agent.base + "/readyz")[0] == 503, 5, what="not ready")
        _code, body = http_get(agent.base + "/readyz")
        assert '"connected": false' in body
        assert agent.proc is not None and agent.proc.poll() is None
        log = agent.log()
        assert "Not authorized" in log or "Bad user name or password" in log, log[-2000:]
        assert log.count("mqtt_connect_refused") == 1  # rate-limited, not a line per retry
        assert agent.terminate() == 0
    assert "wrong" not in agent.log().replace("wrong_password", "")


def test_unknown_ca_is_refused(trained: Path, secure_broker: Broker, tmp_path: Path) -> None:
    """Hostname and chain verification are on: a CA that did not sign the server is refused."""
    other = tmp_path / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
            "-keyout", str(other / "k"), "-out", str(other / "ca.crt"))
    port = free_port()
    cfg = config_for(secure_broker, trained, tmp_path, other / "ca.crt", "s3cret-pass", port)
    with running_agent(cfg, port, tmp_path / "agent.log") as agent:
        wait_until(lambda: http_get(agent.base + "/healthz")[0] == 200, 15, what="agent up")
        wait_until(lambda: "certificate verify failed" in agent.log().lower()
                   or "mqtt_connect_failed" in agent.log(), 15, what="TLS failure logged")
        assert http_get(agent.base + "/readyz")[0] == 503
        assert agent.terminate() == 0
