"""perf_analyzer against the tiny repository over gRPC and HTTP, through bench/perf_analyzer/run.py.

Skips (with what to install) where perf_analyzer or its shared libraries are missing: it needs
``tritonclient[all]==2.51.0`` (bin/perf_analyzer), Debian's ``libb64-0d`` and pip's
``nvidia-cuda-runtime-cu12`` (libcudart.so.12).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_harness():
    spec = importlib.util.spec_from_file_location("perf_harness", ROOT / "bench" / "perf_analyzer" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

SETTINGS = dict(num_frames=2, height=32, width=32, num_inference_steps=2, guidance_scale=9.0, seed=1)


@pytest.fixture(scope="module")
def perf_analyzer():
    try:
        return harness.perf_analyzer_environment()
    except harness.PerfAnalyzerUnavailable as error:
        pytest.skip(str(error))


# ------------------------------------------------------------------------------------------ no server needed


def test_input_data_carries_every_input_and_a_serialized_png():
    import base64
    import io
    import struct

    import PIL.Image

    from openspeedy.contracts import I2VGEN_XL

    data = harness.input_data(3, 100, **SETTINGS)
    assert len(data["data"]) == 3
    images = set()
    for request in data["data"]:
        assert set(request) == set(I2VGEN_XL.input_names)
        raw = base64.b64decode(request["IMAGE"]["b64"])
        (length,) = struct.unpack("<I", raw[:4])
        assert length == len(raw) - 4, "perf_analyzer sends b64 BYTES as Triton's serialized tensor"
        assert PIL.Image.open(io.BytesIO(raw[4:])).format == "PNG"
        images.add(raw)
        assert request["NUM_FRAMES"] == [2] and request["HEIGHT"] == [32] and request["SEED"] == [1]
    assert len(images) == 3, "distinct images, so that the latent cache misses"
    assert len({request["PROMPT"][0] for request in data["data"]}) == 3
    json.dumps(data)  # plain JSON
    assert harness.input_data(1, 100, **SETTINGS)["data"][0]["IMAGE"] == data["data"][0]["IMAGE"]


CONSOLE = """\
Request concurrency: 2
  Client: 
    Request count: 10
    Throughput: 0.212622 infer/sec
    Avg latency: 9273307 usec (standard deviation 430388 usec)
  Server: 
    Inference count: 10
    Execution count: 10
    Successful request count: 10
    Avg request latency: 9271907 usec (overhead 4682482 usec + queue 1526966 usec + compute 3062459 usec)

  Composing models: 
  unet, version: 1
      Inference count: 22
      Execution count: 22
      Successful request count: 21
      Avg request latency: 3569898 usec (overhead 5 usec + queue 1479387 usec + compute input 83 usec + compute infer 2089660 usec + compute output 762 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 2, throughput: 0.212622 infer/sec, latency 9273307 usec
"""


def test_console_report_parser():
    parsed = harness.parse_console(CONSOLE)
    assert list(parsed) == [2]
    run = parsed[2]
    assert run["client"] == {"request_count": 10, "throughput_infer_per_s": 0.212622}
    assert run["server"]["success_count"] == 10 and run["server"]["queue_us"] == 1526966
    assert run["composing"]["unet"]["compute_infer_us"] == 2089660
    assert run["composing"]["unet"]["success_count"] == 21


def test_csv_parser(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,p50 latency,Avg latency\n2,0.5,17,8730997,9273307\n1,1.25,13,1,2\n"
    )
    rows = harness.parse_csv(path)
    assert [row["Concurrency"] for row in rows] == [1, 2]
    assert rows[0]["Inferences/Second"] == 1.25 and rows[1]["p50 latency"] == 8730997


def test_command_for_each_protocol(tmp_path):
    binary = Path("/bin/perf_analyzer")
    grpc = harness.perf_analyzer_command(binary, "grpc", "h:1", tmp_path / "in.json", 2, tmp_path / "o.csv")
    assert grpc[grpc.index("-i") + 1] == "grpc" and grpc[grpc.index("-m") + 1] == "i2vgen_xl"
    assert "--concurrency-range=2" in grpc and "--streaming" not in grpc
    assert "--bls-composing-models=text_encoder,image_encoder,vae_encoder,unet,vae_decoder" in grpc
    http = harness.perf_analyzer_command(binary, "http", "h:2", tmp_path / "in.json", 1, tmp_path / "o.csv")
    assert http[http.index("-i") + 1] == "http"
    stream = harness.perf_analyzer_command(binary, "stream", "h:1", tmp_path / "in.json", 1, tmp_path / "o.csv")
    assert "--streaming" in stream and stream[stream.index("-m") + 1] == "i2vgen_xl_stream"
    assert stream[stream.index("-i") + 1] == "grpc"
    with pytest.raises(ValueError):
        harness.perf_analyzer_command(binary, "websocket", "h:1", tmp_path / "in.json", 1, tmp_path / "o.csv")


# ------------------------------------------------------------------------------------------ real server


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
