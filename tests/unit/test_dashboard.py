"""The Grafana dashboard (one file, in the Helm chart, which can embed only its own files; docker/compose
mounts the same file): valid Grafana JSON whose queries are valid PromQL over the
metrics Triton and OpenSpeedy export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

DASHBOARD = ROOT / "deploy" / "helm" / "openspeedy" / "files" / "openspeedy-dashboard.json"

TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_duration_us",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
}
DEVICE_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_power_usage",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
}
OPENSPEEDY_METRICS = {
    "openspeedy_requests_in_flight",
    "openspeedy_requests_waiting",
    "openspeedy_queue_wait_seconds_sum",
    "openspeedy_denoising_step_seconds_bucket",
    "openspeedy_denoising_step_seconds_sum",
    "openspeedy_denoising_step_seconds_count",
    "openspeedy_frames_generated_total",
    "openspeedy_cache_hits_total",
    "openspeedy_cache_misses_total",
    "openspeedy_cache_evictions_total",
    "openspeedy_cache_bytes",
}
KNOWN = TRITON_METRICS | DEVICE_METRICS | OPENSPEEDY_METRICS
PROMQL_WORDS = {"sum", "avg", "by", "or", "rate", "histogram_quantile", "clamp_min", "le", "model", "reason",
                "instance", "cache", "gpu_uuid"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard):
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _expressions(dashboard):
    return [(panel["title"], target["expr"]) for panel in _panels(dashboard) for target in panel["targets"]]


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", without_ranges))
    return {name for name in names if name not in PROMQL_WORDS and not name.startswith("__")}


def test_dashboard_is_grafana_json(dashboard):
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "model"} <= variables
    occupied = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_dashboard_covers_every_metric_and_names_only_known_ones(dashboard):
    used = set()
    for title, expr in _expressions(dashboard):
        names = _metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= KNOWN, f"{title}: unknown metric(s) {sorted(names - KNOWN)} in {expr}"
        used |= names
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    assert used == KNOWN, f"not on the dashboard: {sorted(KNOWN - used)}"


def test_queries_are_valid_promql(dashboard, tmp_path):
    """promtool parses every query (Grafana's variables replaced by what Grafana would send)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = []
    for index, (title, expr) in enumerate(_expressions(dashboard)):
        expr = expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$instance", ".*")
        assert "$" not in expr, f"{title}: unreplaced variable in {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
