"""perf_analyzer against the tiny repository over gRPC and HTTP, through bench/perf_analyzer/run.py.

Skips (with what to install) where perf_analyzer or its shared libraries are missing: it needs
``tritonclient[all]==2.51.0`` (bin/perf_analyzer), Debian's ``libb64-0d`` and pip's
``nvidia-cuda-runtime-cu12`` (libcudart.so.12); docs/platform.md says why.
"""

from __future__ import annotations

import json

import pytest

from tests.unit.test_perf_analyzer import SETTINGS, harness


@pytest.fixture(scope="module")
def perf_analyzer():
    try:
        return harness.perf_analyzer_environment()
    except harness.PerfAnalyzerUnavailable as error:
        pytest.skip(str(error))



def _sweep(triton, tmp_path, protocols, concurrencies):
    return harness.run_sweep(
        {"grpc": triton.grpc_url, "http": triton.http_url},
        protocols,
        concurrencies,
        tmp_path,
        SETTINGS,
        measurement_request_count=3,
        stability_percentage=10000.0,  # windows on a shared 2-core CI machine vary 10x: accept them all
        max_trials=8,
        warmup=False,
        timeout_s=300,
        log=lambda message: None,
    )


def _check_runs(report, tmp_path, expected):
    runs = {(run["protocol"], run["concurrency"]): run for run in report["runs"]}
    assert set(runs) == expected
    for key, run in runs.items():
        assert "error" not in run, f"{key}: {run['error']}\n{(tmp_path / f'{key[0]}-c{key[1]}.txt').read_text()}"
        assert run["returncode"] == 0
        assert run["csv"]["Inferences/Second"] > 0, key
        assert run["csv"]["Avg latency"] > 0 and run["csv"]["p99 latency"] >= run["csv"]["p50 latency"] > 0, key
        server = run["server"]
        assert server["inference_count"] > 0 and server["success_count"] == server["inference_count"], key
        assert set(run["composing"]) == set(harness.COMPOSING_MODELS), key
        for model, stats in run["composing"].items():
            assert stats["inference_count"] > 0, (key, model)
            assert stats["success_count"] == stats["inference_count"], (key, model)
            assert stats["compute_infer_us"] > 0, (key, model)
        # one video = NUM_INFERENCE_STEPS unet calls (windows may cut a video: allow one short)
        assert run["composing"]["unet"]["inference_count"] >= SETTINGS["num_inference_steps"] * (
            server["inference_count"] - 1), key


@pytest.mark.server
def test_perf_analyzer_grpc_and_http_with_composing_models(triton, perf_analyzer, tmp_path):
    report = _sweep(triton, tmp_path, ["grpc", "http"], [1, 2])
    _check_runs(report, tmp_path, {("grpc", 1), ("grpc", 2), ("http", 1), ("http", 2)})
    assert report["skipped"] == []

    json_path, md_path = harness.write_report(
        {"name": "ci", "date": "today", "device": harness.device_description(), "repository": "tiny", **report},
        tmp_path / "results", "ci")
    assert json.loads(json_path.read_text())["runs"]
    table = md_path.read_text()
    assert "| grpc | 1 |" in table and "| http | 2 |" in table and "unet ms" in table


@pytest.mark.server
def test_perf_analyzer_streaming_or_a_clean_skip(triton, perf_analyzer, tmp_path):
    """gRPC --streaming against i2vgen_xl_stream; where the server lacks that model the run is skipped."""
    report = _sweep(triton, tmp_path, ["stream"], [1])
    if report["skipped"]:
        assert report["runs"] == []
        assert "i2vgen_xl_stream" in report["skipped"][0]["reason"]
        pytest.skip(report["skipped"][0]["reason"])
    _check_runs(report, tmp_path, {("stream", 1)})
    run = report["runs"][0]
    # one progress response per step, then the video
    assert run["csv"]["Response Throughput"] == pytest.approx(
        run["csv"]["Inferences/Second"] * (SETTINGS["num_inference_steps"] + 1), rel=0.2)


@pytest.mark.server
def test_perf_analyzer_reports_a_failing_model(triton, perf_analyzer, tmp_path):
    """An input the model refuses makes the run an error in the report, not a silent zero."""
    input_path = harness.write_input_data(tmp_path / "bad.json", **dict(SETTINGS, height=36))  # not a multiple of 8
    binary, env = perf_analyzer
    record = harness.run_one(binary, env, "grpc", triton.grpc_url, input_path, 1, tmp_path, timeout_s=120,
                             measurement_request_count=3, stability_percentage=1000.0, max_trials=2)
    assert "error" in record
    assert "HEIGHT" in record["output"]
