"""deploy/kubernetes: schema-valid for a pinned Kubernetes, lint-clean, and each
ConfigMap's Trident config passes `trident check` with the pod's drain fitting its
termination grace period."""

import tomllib

import pytest
import yaml

from conftest import DEPLOY, run, venv_tool

KUBERNETES = DEPLOY / "kubernetes"
# Native sidecars (1.29) and the preStop `sleep` action (1.30) are beta from here.
KUBERNETES_VERSION = "1.30.0"
# Trident's defaults (README, Running in production).
DEFAULT_DRAIN_DELAY_SECS = 5
DEFAULT_SHUTDOWN_TIMEOUT_SECS = 30


def manifests():
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(kind):
    """(file, document) for every document of `kind` under deploy/kubernetes."""
    return [
        (path, doc)
        for path in manifests()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == kind
    ]


def test_manifests_match_the_kubernetes_schemas():
    run(
        venv_tool("kubernetes-validate"),
        "--strict",
        "--kubernetes-version",
        KUBERNETES_VERSION,
        *manifests(),
    )


def test_yaml_is_lint_clean():
    run(venv_tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)


def test_kustomization_lists_every_edge_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "edge" / "kustomization.yaml").read_text())
    edge = sorted(p.name for p in manifests() if p.parent.name == "edge")
    assert sorted(kustomization["resources"]) == edge


@pytest.mark.parametrize(
    "path,config_map", documents("ConfigMap"), ids=lambda v: getattr(v, "name", None)
)
def test_config_map_passes_trident_check(trident_bin, tmp_path, path, config_map):
    config = tmp_path / "trident.toml"
    config.write_text(config_map["data"]["trident.toml"])
    run(trident_bin, "check", "--config", config)


def trident_containers(pod_spec):
    return [
        c
        for c in pod_spec.get("initContainers", []) + pod_spec["containers"]
        if "trident" in c["image"]
    ]


def config_of(pod_spec, container):
    """The TOML of the ConfigMap mounted at /etc/trident in `container`."""
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/trident")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    config_map = next(d for _, d in documents("ConfigMap") if d["metadata"]["name"] == name)
    return tomllib.loads(config_map["data"]["trident.toml"])


@pytest.mark.parametrize(
    "path,deployment", documents("Deployment"), ids=lambda v: getattr(v, "name", None)
)
def test_trident_pods_probe_admin_and_outlast_the_drain(path, deployment):
    spec = deployment["spec"]["template"]["spec"]
    (trident,) = trident_containers(spec)
    server = config_of(spec, trident)["server"]
    admin_port = int(server["admin_listen"].rsplit(":", 1)[1])
    assert server["admin_listen"].startswith("0.0.0.0:"), "kubelet probes come from outside the pod"
    ports = {p["name"]: p["containerPort"] for p in trident["ports"]}
    for probe, path_ in [("readinessProbe", "/ready"), ("livenessProbe", "/live")]:
        assert trident[probe]["httpGet"]["path"] == path_
        assert ports[trident[probe]["httpGet"]["port"]] == admin_port
    drain = server.get("drain_delay_secs", DEFAULT_DRAIN_DELAY_SECS)
    shutdown = server.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_TIMEOUT_SECS)
    # Main containers' preStop sleeps run before the sidecar's SIGTERM.
    pre_stop = sum(
        c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        for c in spec["containers"]
    )
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + shutdown + 5
    # Serving goes on until clients that learn from the readiness probe have learnt.
    readiness = trident["readinessProbe"]
    assert pre_stop + drain >= readiness["periodSeconds"] * readiness["failureThreshold"]
    security = {**spec.get("securityContext", {}), **trident["securityContext"]}
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert "memory" in trident["resources"]["limits"] and "cpu" in trident["resources"]["requests"]
