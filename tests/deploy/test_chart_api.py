"""The chart's `openspeedy api` pieces (api.enabled): a Deployment and Service of their own, keys from a
Secret, the Redis URL through the chart's existing Secret wiring, and the values that cannot work refused."""

from __future__ import annotations

import pytest
import yaml

from openspeedy.cli import build_parser
from tests.deploy.test_deploy import KUBERNETES_VERSION, run, template

API = ("api.enabled=true", "api.keys.existingSecret=openspeedy-api-keys", "redis.existingSecret=openspeedy-redis")


def documents(text: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def test_api_is_off_by_default(helm):
    rendered = template(helm)
    assert rendered.returncode == 0, rendered.stderr
    assert not [name for _, name in documents(rendered.stdout) if name.endswith("-api")]


def test_rendered_api_deployment_and_service(helm, kubernetes_validate, tmp_path):
    rendered = template(helm, *API, "api.maxJobsPerKey=3", "api.extraArgs={--lease-s=60}")
    assert rendered.returncode == 0, rendered.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered.stdout)
    result = run(kubernetes_validate, "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path))
    assert result.returncode == 0, result.stdout + result.stderr

    found = documents(rendered.stdout)
    deployment, service = found[("Deployment", "rel-openspeedy-api")], found[("Service", "rel-openspeedy-api")]
    server_service = found[("Service", "rel-openspeedy")]
    pod = deployment["spec"]["template"]
    # The server's Service never selects API pods, and the API's Service selects only them.
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in server_service["spec"]["selector"].items())
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]

    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["openspeedy", "api"]
    parsed = build_parser().parse_args(args[1:])  # the flags exist and mean what the chart intends
    assert (parsed.host, parsed.port, parsed.server) == ("0.0.0.0", 8080, "rel-openspeedy:8001")
    assert (parsed.max_jobs_per_key, parsed.lease_s) == (3, 60)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert str(parsed.keys_file).startswith(mounts["api-keys"] + "/")
    assert volumes["api-keys"]["secret"]["secretName"] == "openspeedy-api-keys"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OPENSPEEDY_REDIS_URL_FILE"].startswith(mounts["redis-url"] + "/")
    assert volumes["redis-url"]["secret"]["secretName"] == "openspeedy-redis"
    assert "/tmp" in mounts.values() and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


@pytest.mark.parametrize("settings, message", [
    (("api.enabled=true", "redis.existingSecret=r"), "api.keys.existingSecret"),
    (("api.enabled=true", "api.keys.existingSecret=k"), "needs redis.existingSecret"),
    ((*API, "api.maxJobsPerKey=0"), "maxJobsPerKey"),
    ((*API, "api.keysFile=x"), "keysFile"),
], ids=["no-keys", "replicas-without-redis", "limit-0", "misspelt-key"])
def test_api_values_that_cannot_work_are_refused(helm, settings, message):
    result = template(helm, *settings)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_one_api_replica_may_keep_jobs_in_memory(helm):
    result = template(helm, "api.enabled=true", "api.keys.existingSecret=k", "api.replicaCount=1")
    assert result.returncode == 0, result.stderr
    (container,) = documents(result.stdout)[("Deployment", "rel-openspeedy-api")]["spec"]["template"]["spec"][
        "containers"]
    assert "env" not in container
