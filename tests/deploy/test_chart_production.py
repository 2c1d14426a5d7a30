"""The chart in production: a strict values schema, the HPA and its prometheus-adapter rule, secrets from
Secrets, probes that check every model, rollouts that cannot stall on a ReadWriteOnce volume, an atomic
export, monitoring resources validated against their CRD schemas, and the helm test pod off the Service.

Tools skip with a reason where missing: helm ($HELM or PATH), kubernetes-validate, promtool (Debian's
prometheus), node with @kubernetes-models/prometheus-operator ($CRD_MODELS, installed by make deploy-tools):
its compiled CRD validators plus a check that every field is declared (tests/deploy/validate_crds.mjs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "openspeedy"
DASHBOARD = CHART / "files" / "openspeedy-dashboard.json"  # the one copy: docker/compose.yaml mounts it too
RULES = CHART / "files" / "prometheus-rules.yaml"
EXPORT_SCRIPT = CHART / "files" / "export-repository.sh"
CRD_MODELS = Path(os.environ.get("CRD_MODELS", ROOT / "build" / "tools" / "crd-models"))
KUBERNETES_VERSION = "1.29.0"


def tool(name: str, env_var: str, hint: str) -> str:
    candidate = os.environ.get(env_var) or shutil.which(name)
    if not candidate or not os.access(candidate, os.X_OK):
        pytest.skip(f"{name} not found (${env_var} or PATH): {hint}")
    return candidate


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm", "HELM", "make deploy-tools")


def run(*command: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT, input=stdin,
                          env=None if env is None else dict(os.environ, **env))


def render(helm: str, *settings: str) -> list[dict]:
    arguments = [a for s in settings for a in ("--set", s)]
    result = run(helm, "template", "rel", str(CHART), "--namespace", "ns", *arguments)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(documents: list[dict], kind: str, name_suffix: str = "") -> dict:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    return found


def server_container(documents: list[dict]) -> dict:
    return one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]


EVERYTHING = ("autoscaling.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
              "metrics.grafanaDashboard.enabled=true", "service.headless=true", "redis.existingSecret=cache-url",
              "adminKey.existingSecret=admin", "modelRepository.export.enabled=true",
              "modelRepository.persistentVolumeClaim.accessModes={ReadWriteMany}")


# --- values schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("typo", ["autoscalling.enabled=true", "triton.maxRequestSecond=60",
                                  "metrics.serviceMonitor.enable=true", "probes.readiness.path=/v2/health/ready"])
def test_a_values_typo_fails_lint_and_template(helm, typo):
    lint = run(helm, "lint", "--strict", str(CHART), "--set", typo)
    assert lint.returncode != 0 and "Additional property" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    assert run(helm, "template", "rel", str(CHART), "--set", typo).returncode != 0


def test_every_object_of_the_schema_is_closed():
    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
    walk(json.loads((CHART / "values.schema.json").read_text()), "values")


def test_lint_strict_with_everything_on(helm):
    result = run(helm, "lint", "--strict", str(CHART), *[a for s in EVERYTHING for a in ("--set", s)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- manifests: kubernetes-validate for built-in kinds, the CRD schemas for the operator's ---------------


def test_everything_on_validates_strictly_with_crds_against_their_schemas(helm, tmp_path):
    validate = tool("kubernetes-validate", "KUBERNETES_VALIDATE", "pip install kubernetes-validate")
    node = tool("node", "NODE", "apt-get install nodejs")
    if not (CRD_MODELS / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip(f"@kubernetes-models/prometheus-operator is not installed in {CRD_MODELS} (make deploy-tools)")
    documents = render(helm, *EVERYTHING)
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Pod",
                            "PodDisruptionBudget", "PrometheusRule", "Service", "Service", "ServiceAccount",
                            "ServiceMonitor", "PersistentVolumeClaim"])
    custom = [d for d in documents if d["apiVersion"].startswith("monitoring.coreos.com/")]
    builtin = [d for d in documents if d not in custom]
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = run(validate, "--strict", "-k", KUBERNETES_VERSION, str(path))
    assert result.returncode == 0 and "Couldn't find schema" not in result.stdout + result.stderr, result.stdout
    crds = run(node, str(ROOT / "tests" / "deploy" / "validate_crds.mjs"), stdin=json.dumps(custom),
               env={"CRD_MODELS": str(CRD_MODELS)})
    assert crds.returncode == 0, crds.stdout + crds.stderr
    assert crds.stdout.count("valid: ") == 2

    # The CRD validation can fail: a wrong type in the ServiceMonitor is caught.
    broken = json.loads(json.dumps(custom))
    one(broken, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] = 15
    refused = run(node, str(ROOT / "tests" / "deploy" / "validate_crds.mjs"), stdin=json.dumps(broken),
                  env={"CRD_MODELS": str(CRD_MODELS)})
    assert refused.returncode == 1 and "interval must be string" in refused.stdout
    # ... and so is a field the CRD does not declare (strict, as kubernetes-validate --strict for built-ins).
    misspelt = json.loads(json.dumps(custom))
    one(misspelt, "ServiceMonitor")["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    one(misspelt, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["severity"] = "warning"
    refused = run(node, str(ROOT / "tests" / "deploy" / "validate_crds.mjs"), stdin=json.dumps(misspelt),
                  env={"CRD_MODELS": str(CRD_MODELS)})
    assert refused.returncode == 1, refused.stdout
    assert "/spec/endpoints/0/scrapeTimout is not a field of Endpoint" in refused.stdout
    assert "/spec/groups/0/rules/0/severity is not a field of Rule" in refused.stdout


# --- autoscaling -----------------------------------------------------------------------------------------


def test_autoscaling_renders_an_hpa_on_the_adapter_rules_metric(helm):
    documents = render(helm, "autoscaling.enabled=true", "autoscaling.maxReplicas=6")
    assert "replicas" not in one(documents, "Deployment")["spec"], "the HPA owns the replica count"
    hpa = one(documents, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-openspeedy"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 6)
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    down = hpa["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600 and down["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 300}]

    adapter = yaml.safe_load(one(documents, "ConfigMap", "-prometheus-adapter")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"] == "openspeedy_load"
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "openspeedy_requests_in_flight" in rule["metricsQuery"]
    assert "nv_inference_pending_request_count" in rule["metricsQuery"]
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert "HorizontalPodAutoscaler" not in [d["kind"] for d in render(helm)]


def test_exit_timeout_and_grace_period_follow_the_longest_request(helm):
    documents = render(helm, "triton.maxRequestSeconds=900", "triton.drainSeconds=20",
                       "modelRepository.export.enabled=true")
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["OPENSPEEDY_EXIT_TIMEOUT_SECS"] == "915"
    assert pod["terminationGracePeriodSeconds"] == 20 + 915 + 30
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "20"]
    assert pod["initContainers"][0]["command"][-2:] == ["--max-request-seconds", "900"]


# --- storage and rollouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, strategy", [
    ((), {"type": "Recreate"}),
    (("modelRepository.persistentVolumeClaim.accessModes={ReadWriteOncePod}",), {"type": "Recreate"}),
    (("modelRepository.persistentVolumeClaim.accessModes={ReadWriteMany}",),
     {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
    (("modelRepository.type=image",), {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
    (("modelRepository.persistentVolumeClaim.accessModes={ReadWriteMany}", "strategy.type=RollingUpdate",
      "strategy.rollingUpdate.maxSurge=1", "strategy.rollingUpdate.maxUnavailable=0"),
     {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
], ids=["rwo-default", "rwop", "rwx", "image", "rwx-surge-override"])
def test_rollouts_cannot_stall_on_a_single_node_volume(helm, settings, strategy):
    assert one(render(helm, *settings), "Deployment")["spec"]["strategy"] == strategy


def test_a_surge_on_a_readwriteonce_volume_is_refused(helm):
    result = run(helm, "template", "rel", str(CHART), "--set", "strategy.type=RollingUpdate",
                 "--set", "strategy.rollingUpdate.maxSurge=1")
    assert result.returncode != 0 and "ReadWriteOnce model volume" in result.stderr


def _fake_openspeedy(bin_dir: Path, fail: bool = False) -> None:
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "openspeedy"
    body = "exit 1" if fail else 'mkdir -p "$out/i2vgen_xl"; sleep 1; echo "$$" > "$out/i2vgen_xl/config.pbtxt"'
    fake.write_text('#!/bin/sh\nwhile [ "$#" -gt 0 ]; do [ "$1" = --output ] && out="$2"; shift; done\n'
                    f'echo "export $$" >> "$(dirname "$out")/../../exports.log"\n{body}\n')
    fake.chmod(0o755)


def _export(volume: Path, bin_dir: Path, force: bool = False) -> subprocess.CompletedProcess:
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "EXPORT_VOLUME": str(volume),
           "REPOSITORY_SUBPATH": "repository", "FORCE_EXPORT": str(force).lower()}
    return subprocess.run(["sh", "-c", EXPORT_SCRIPT.read_text(), "openspeedy-export", "--tiny"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_export_init_container_is_atomic_and_exports_once(tmp_path):
    volume, bin_dir = tmp_path / "volume", tmp_path / "bin"
    volume.mkdir()
    _fake_openspeedy(bin_dir)
    results = []
    pods = [threading.Thread(target=lambda: results.append(_export(volume, bin_dir))) for _ in range(3)]
    for pod in pods:
        pod.start()
    for pod in pods:
        pod.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert len((tmp_path / "exports.log").read_text().splitlines()) == 1, "pods starting together exported twice"
    assert (volume / "repository" / ".openspeedy-export-complete").is_file()
    assert (volume / "repository" / "i2vgen_xl" / "config.pbtxt").is_file()
    assert sorted(p.name for p in volume.iterdir()) == [".openspeedy-export.lock", "repository"], "staging left over"

    # A failed forced export leaves the complete repository as it was.
    _fake_openspeedy(bin_dir, fail=True)
    before = (volume / "repository" / "i2vgen_xl" / "config.pbtxt").read_text()
    assert _export(volume, bin_dir, force=True).returncode != 0
    assert (volume / "repository" / "i2vgen_xl" / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in volume.iterdir()) == [".openspeedy-export.lock", "repository"]


def test_an_interrupted_export_is_redone(tmp_path):
    """A half-written repository (no completion marker, e.g. a pod killed mid-export by an older chart) is
    exported again instead of served."""
    volume, bin_dir = tmp_path / "volume", tmp_path / "bin"
    (volume / "repository" / "unet").mkdir(parents=True)
    (volume / "repository" / "i2vgen_xl").mkdir()
    (volume / "repository" / "i2vgen_xl" / "config.pbtxt").write_text("half")
    _fake_openspeedy(bin_dir)
    assert _export(volume, bin_dir).returncode == 0
    assert (volume / "repository" / ".openspeedy-export-complete").is_file()
    assert not (volume / "repository" / "unet").exists()


# --- secrets, probes, services, test pod -----------------------------------------------------------------


def test_secrets_are_mounted_files_never_values(helm):
    documents = render(helm, "redis.existingSecret=cache-url", "adminKey.existingSecret=admin")
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable, volume, secret, key in (("OPENSPEEDY_REDIS_URL_FILE", "redis-url", "cache-url", "url"),
                                          ("OPENSPEEDY_ADMIN_KEY_FILE", "admin-key", "admin", "admin-key")):
        assert env[variable] == f"{mounts[volume]['mountPath']}/{key}"
        assert mounts[volume]["readOnly"] is True
        assert volumes[volume]["secret"]["secretName"] == secret
    text = json.dumps(documents)
    assert "redis://" not in text and "OPENSPEEDY_REDIS_URL\"" not in text
    plain = server_container(render(helm))
    assert not {"OPENSPEEDY_REDIS_URL_FILE", "OPENSPEEDY_ADMIN_KEY_FILE"} & {e["name"] for e in plain["env"]}


def test_probes_check_every_model_through_the_probe_command(helm):
    container = server_container(render(helm))
    for kind, check in (("startup", "ready"), ("readiness", "ready"), ("liveness", "live")):
        assert container[f"{kind}Probe"]["exec"]["command"] == ["python", "-m", "openspeedy.probe", check]
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120, "liveness must leave the watchdog time to reload"
    assert "args" not in container, "no flags repeated: the entrypoint runs openspeedy serve with its defaults"
    extra = server_container(render(helm, "triton.extraArgs={--log-info=true}"))
    assert extra["args"] == ["--", "--log-info=true"]


def test_headless_service_for_client_side_grpc_balancing(helm):
    documents = render(helm, "service.headless=true")
    main, headless = one(documents, "Service", "openspeedy"), one(documents, "Service", "-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert {p["name"] for p in headless["spec"]["ports"]} == {"http", "grpc"}


def test_helm_test_pod_is_off_the_services_selector(helm):
    documents = render(helm)
    selector = one(documents, "Service")["spec"]["selector"]
    test_pod = one(documents, "Pod")
    labels = test_pod["metadata"]["labels"]
    assert not all(labels.get(key) == value for key, value in selector.items())
    ready, restricted = test_pod["spec"]["containers"]
    assert ready["command"][:4] == ["python", "-m", "openspeedy.probe", "ready"]
    assert ready["command"].count("--model") == 7
    assert "/v2/repository/index" in restricted["command"][2] and "403" in restricted["command"][2]


# --- monitoring ----------------------------------------------------------------------------------------


def test_grafana_dashboard_configmap_is_labelled_and_holds_the_dashboard(helm):
    configmap = one(render(helm, "metrics.grafanaDashboard.enabled=true"), "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["openspeedy-dashboard.json"]) == json.loads(DASHBOARD.read_text())


def test_prometheus_rule_is_the_rules_file(helm):
    rule = one(render(helm, "metrics.prometheusRule.enabled=true",
                      "metrics.prometheusRule.additionalLabels.release=kps"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"OpenSpeedyQueueTimeHigh", "OpenSpeedyRequestsFailing", "OpenSpeedyModelReloaded",
                      "OpenSpeedyPodRestarting"}


def test_promtool_checks_the_rules():
    promtool = tool("promtool", "PROMTOOL", "apt-get install prometheus")
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stdout + result.stderr
