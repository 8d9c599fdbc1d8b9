"""deploy/kubernetes: kustomizations list every file, manifests pass the schemas, and the pieces fit."""

from __future__ import annotations

import copy
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.config import AgentConfig
from tests.deploy.tools import DEPLOY

K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes still common on edge distributions (k3s, MicroK8s), and the newest known.
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
Doc = dict[str, Any]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def render(folder: Path) -> list[Doc]:
    """The resources a kustomization yields: its files and folders, with namespace and images applied.

    Only the fields these kustomizations use; `kubectl kustomize` renders the same (checked by hand).
    """
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for res in k["resources"]:
        path = (folder / res).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k.get("images", [])}
    for d in docs:
        if "namespace" in k and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = k["namespace"]
        if d["kind"] == "DaemonSet":
            for c in pod_spec(d)["containers"] + pod_spec(d).get("initContainers", []):
                c["image"] = images.get(c["image"], c["image"])
    return docs


def pod_spec(d: Doc) -> Doc:
    spec: Doc = d["spec"]["template"]["spec"]
    return spec


def one(docs: list[Doc], kind: str) -> Doc:
    (d,) = [d for d in docs if d["kind"] == kind]
    return d


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render(K8S / "monitoring")


class TestKustomize:
    @pytest.mark.parametrize("k", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
    def test_lists_every_file(self, k: Path) -> None:
        """Each kustomization.yaml lists every manifest in its folder, and everything it lists exists."""
        listed = yaml.safe_load(k.read_text())["resources"]
        files = {p.name for p in k.parent.glob("*.y*ml")} - {"kustomization.yaml"}
        assert {r for r in listed if (k.parent / r).is_file()} == files
        for r in listed:
            target = k.parent / r
            assert target.is_file() or (target / "kustomization.yaml").is_file(), r

    def test_every_manifest_is_reachable(self) -> None:
        """Every manifest under deploy/kubernetes is rendered by the root or the monitoring kustomization."""
        rendered = {(d["kind"], d["metadata"]["name"]) for d in render(K8S) + render(K8S / "monitoring")}
        files = [p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"]
        on_disk = {(d["kind"], d["metadata"]["name"])
                   for p in files for d in yaml.safe_load_all(p.read_text()) if d}
        assert on_disk == rendered

    def test_root_is_the_agent_and_monitoring_adds_a_servicemonitor(self) -> None:
        """The root kustomization deploys the agent alone; monitoring/ adds exactly the ServiceMonitor."""
        base = {d["kind"] for d in render(K8S)}
        assert base == {"Namespace", "ConfigMap", "Secret", "DaemonSet", "Service"}
        assert {d["kind"] for d in render(K8S / "monitoring")} - base == {"ServiceMonitor"}


class TestSchemas:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_manifests_validate(self, docs: list[Doc], version: str) -> None:
        """Every built-in resource validates strictly (no unknown fields) against the Kubernetes schemas."""
        for d in docs:
            if d["kind"] != "ServiceMonitor":  # a CRD: checked against the Service below
                kubernetes_validate.validate(d, version, strict=True)

    def test_strict_validation_catches_a_typo(self, docs: list[Doc]) -> None:
        """The validator does reject a misspelt field, so a pass above means something."""
        ds = copy.deepcopy(one(docs, "DaemonSet"))
        pod_spec(ds)["containers"][0]["livenessprobe"] = pod_spec(ds)["containers"][0].pop("livenessProbe")
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


class TestWiring:
    def test_daemonset_runs_on_gateways(self, docs: list[Doc]) -> None:
        """The DaemonSet selects gateway nodes, tolerates their taint, and rolls one node at a time."""
        ds = one(docs, "DaemonSet")
        spec = pod_spec(ds)
        assert spec["nodeSelector"] == {"vigil.io/gateway": "true"}
        assert any(t["key"] == "vigil.io/gateway" for t in spec["tolerations"])
        assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                                "rollingUpdate": {"maxUnavailable": 1}}
        pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    def test_agent_container_is_locked_down(self, docs: list[Doc]) -> None:
        """The agent runs as non-root with a read-only root filesystem and no capabilities."""
        spec = pod_spec(one(docs, "DaemonSet"))
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
        (agent,) = spec["containers"]
        sc = agent["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert agent["image"] == "registry.plant.example/vigil-agent:0.1.0"  # the kustomize image applied

    def test_probes(self, docs: list[Doc]) -> None:
        """Liveness probes /healthz and readiness /readyz on the container's named metrics port."""
        (agent,) = pod_spec(one(docs, "DaemonSet"))["containers"]
        ports = {p["name"] for p in agent["ports"]}
        assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert agent[probe]["httpGet"]["port"] in ports

    def test_node_name_is_the_client_id(self, docs: list[Doc], tmp_path: Path) -> None:
        """The container's own start command turns the ConfigMap into a valid config whose client id
        is the node's name, with secrets, state and model under the mounted volumes."""
        spec = pod_spec(one(docs, "DaemonSet"))
        (agent,) = spec["containers"]
        env = {e["name"]: e for e in agent["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        (script,) = agent["args"]
        cm = one(docs, "ConfigMap")
        (tmp_path / "in.toml").write_text(cm["data"]["agent.toml"])
        # The real shell command, with the container's paths mapped into tmp_path and the agent left out.
        script = (script.replace("/etc/vigil/agent.toml", str(tmp_path / "in.toml"))
                  .replace("/run/vigil/agent.toml", str(tmp_path / "out.toml"))
                  .replace("exec vigil-agent run --config", "test -s"))
        subprocess.run([*agent["command"], script], env={"NODE_NAME": "edge-node-7", "PATH": "/usr/bin:/bin"},
                       check=True, timeout=10)
        cfg = AgentConfig.model_validate(tomllib.loads((tmp_path / "out.toml").read_text()))
        assert cfg.broker.client_id == cfg.resolved_agent_id == "edge-node-7"
        mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        assert mounts[str(cfg.state.dir)] == "state"
        assert cfg.model.path.is_relative_to(cfg.state.dir)
        assert str(cfg.broker.password_file).startswith("/etc/vigil/secrets/")
        assert str(cfg.broker.tls.ca_file).startswith("/etc/vigil/secrets/")
        assert mounts["/etc/vigil/secrets"] == "broker-secret"
        assert cfg.http.host_port == ("0.0.0.0", agent["ports"][0]["containerPort"])

    def test_volumes_and_secret_keys_exist(self, docs: list[Doc]) -> None:
        """Every ConfigMap, Secret and key the pod refers to is shipped."""
        spec = pod_spec(one(docs, "DaemonSet"))
        cm, secret = one(docs, "ConfigMap"), one(docs, "Secret")
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
        assert volumes["broker-secret"]["secret"]["secretName"] == secret["metadata"]["name"]
        assert {"password", "ca.crt", "username"} <= set(secret["stringData"])
        (agent,) = spec["containers"]
        for e in agent["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
        used = {m["name"] for c in spec["containers"] + spec["initContainers"] for m in c["volumeMounts"]}
        assert used == set(volumes)
        assert volumes["state"]["hostPath"]["path"] == "/var/lib/vigil"  # outbox survives pod replacement

    def test_service_and_servicemonitor_select_the_agent(self, docs: list[Doc]) -> None:
        """The metrics Service selects the agent pods on their metrics port, and the ServiceMonitor
        selects that Service and port."""
        ds, svc, sm = one(docs, "DaemonSet"), one(docs, "Service"), one(docs, "ServiceMonitor")
        assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] in {p["name"] for p in pod_spec(ds)["containers"][0]["ports"]}
        assert svc["spec"]["publishNotReadyAddresses"]  # an agent without broker is still scraped
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert [e["port"] for e in sm["spec"]["endpoints"]] == [port["name"]]
        assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"] == "vigil"
