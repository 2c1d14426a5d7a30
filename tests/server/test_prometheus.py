"""A real Prometheus (Debian's package) scrapes a running server with the shipped alert rules loaded; the
cache, denoising-step, in-flight and model-load metrics are read back through Prometheus' HTTP API, and the
autoscaler's load query (the prometheus-adapter rule the chart ships) gives the load of a busy server."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from openspeedy.client import Client
from tests.helpers import encode, free_port, random_image

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "helm" / "openspeedy" / "files" / "prometheus-rules.yaml"
ADAPTER_RULES = ROOT / "deploy" / "helm" / "openspeedy" / "files" / "prometheus-adapter-rules.yaml"
MODELS = {"i2vgen_xl", "i2vgen_xl_stream", "text_encoder", "image_encoder", "vae_encoder", "unet", "vae_decoder"}


class Prometheus:
    def __init__(self, directory: Path, target: str):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (make test installs it with apt-get)")
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": "openspeedy", "static_configs": [{"targets": [target]}]}]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(directory / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: self.api("targets")["activeTargets"][0]["health"] == "up", 60, "a scrape")

    def api(self, path: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expression: str) -> dict[str, float]:
        """An instant query: the value of each series, keyed by its labels as JSON."""
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                for r in self.api("query", query=expression)["result"]}

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (OSError, KeyError, IndexError):
                pass  # not up yet
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture
def prometheus(triton, tmp_path):
    target = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    server = Prometheus(tmp_path, target)
    yield server
    server.stop()


def adapter_query() -> str:
    """The metricsQuery of the chart's prometheus-adapter rule, as the adapter expands it for this job."""
    rule = yaml.safe_load(ADAPTER_RULES.read_text().replace("{{ .Values.autoscaling.metricName | quote }}",
                                                            '"openspeedy_load"'))["rules"][0]
    return rule["metricsQuery"].replace("<<.GroupBy>>", "instance").replace("<<.LabelMatchers>>", 'job="openspeedy"')


def test_prometheus_scrapes_cache_step_in_flight_and_load_metrics(triton, prometheus):
    image = encode(random_image(72, 56, seed=51))
    request = dict(num_frames=8, height=64, width=64, num_inference_steps=60, seed=4)
    outcome = {}

    def generate():
        with Client(triton.grpc_url, "grpc", timeout_s=300) as client:
            outcome["frames"] = client.generate(image, "a slow one", **request).frames

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        # While the video is being made: one request in flight, and the autoscaler's load query says so.
        prometheus.wait_for(lambda: prometheus.query('openspeedy_requests_in_flight{model="i2vgen_xl"}')
                            and max(prometheus.query('openspeedy_requests_in_flight{model="i2vgen_xl"}').values()) >= 1,
                            120, "a request in flight in Prometheus")
        load = prometheus.query(adapter_query())
        assert list(load.values()) and max(load.values()) >= 1, load
    finally:
        worker.join(300)
    assert outcome["frames"].shape == (8, 64, 64, 3)

    prometheus.wait_for(lambda: prometheus.query('openspeedy_requests_in_flight{model="i2vgen_xl"}')
                        and max(prometheus.query('openspeedy_requests_in_flight{model="i2vgen_xl"}').values()) == 0,
                        60, "the request to end in Prometheus")
    steps = prometheus.query('sum(openspeedy_denoising_step_seconds_count{model="i2vgen_xl"})')
    assert list(steps.values())[0] >= request["num_inference_steps"]
    misses = prometheus.query('sum by (cache) (openspeedy_cache_misses_total)')
    assert {json.loads(k)["cache"] for k, v in misses.items() if v >= 1} >= {"image", "prompt"}
    # The same image and prompt again: both caches hit.
    with Client(triton.grpc_url, "grpc", timeout_s=300) as client:
        client.generate(image, "a slow one", **dict(request, num_inference_steps=2))
    prometheus.wait_for(lambda: {json.loads(k)["cache"] for k, v in prometheus.query(
        "sum by (cache) (openspeedy_cache_hits_total)").items() if v >= 1} >= {"image", "prompt"}, 30, "cache hits")
    loads = prometheus.query("openspeedy_model_load_timestamp_seconds")
    assert {json.loads(k)["model"] for k in loads} == MODELS
    assert all(time.time() - 3600 < value <= time.time() for value in loads.values())

    # The shipped alert rules are loaded and evaluate without errors against the real series.
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {"OpenSpeedyQueueTimeHigh", "OpenSpeedyRequestsFailing",
                                               "OpenSpeedyModelReloaded", "OpenSpeedyPodRestarting"}
    prometheus.wait_for(lambda: all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]),
                        30, "every rule evaluated")
