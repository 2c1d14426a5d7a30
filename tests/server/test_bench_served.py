"""Benchmarks that run against a real server: the served UNet's timing adapter (python -m bench.gpu_serving
--unet-timings) records every call and changes no result; the job API's overhead against a direct stream."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import encode, free_port, random_image


def test_timed_unet_model_records_every_call_and_changes_nothing(triton, tiny_repository, tmp_path, monkeypatch):
    """bench.gpu_serving --unet-timings, through a real server: one timing line per UNet call, the
    profile of calls 60..62, and the video the production adapter serves."""
    from bench import gpu_serving
    from openspeedy.client import Client
    from openspeedy.server import ServerOptions, TritonServer

    repository = tmp_path / "repository"
    shutil.copytree(tiny_repository, repository, symlinks=True)
    timings = tmp_path / "unet_timings.jsonl"
    monkeypatch.setenv("OPENSPEEDY_UNET_TIMINGS", "")  # restored afterwards; use_timed_unet sets it
    gpu_serving.use_timed_unet(repository, timings)
    request = dict(image=encode(random_image(64, 64, seed=3)), prompt="x", num_frames=2, num_inference_steps=63,
                   seed=5)
    options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer(options, log_path=tmp_path / "triton.log").start()
    try:
        with Client(server.grpc_url) as client:
            timed = client.generate(**request).frames
    finally:
        assert server.stop() == 0  # the model's finalize writes the last call's line and the profile
    with Client(triton.grpc_url) as client:
        assert np.array_equal(timed, client.generate(**request).frames)

    rows = gpu_serving.read_unet_timings(timings)
    assert len(rows) == 63
    for row in rows:
        assert 0 < row["cpu_read_inputs_ms"] < row["cpu_execute_ms"]
        assert 0 < row["cpu_forward_ms"] < row["cpu_execute_ms"]
        assert "gpu_execute_ms" not in row  # no GPU here
    assert set(gpu_serving.medians(rows)) == set(rows[0])
    report = Path(f"{timings}.prof.txt").read_text()
    assert report.startswith("calls 60..62") and "runtime.py" in report and "Python (cProfile)" in report


def test_the_job_api_overhead_benchmark_times_both_paths_and_gets_the_same_video(triton, tmp_path):
    """bench.job_api_overhead against a running server: it starts `openspeedy api` itself, times the video
    both ways, and both ways give the same frames."""
    subprocess.run([sys.executable, "-m", "bench.job_api_overhead", "--out", str(tmp_path), "--server", triton.grpc_url,
                    "--size", "2x64x64", "--steps", "3", "--repeats", "1"], check=True, capture_output=True,
                   timeout=300)
    result = json.loads((tmp_path / "job_api_overhead.json").read_text())
    assert (result["size"], result["steps"], result["preview_interval"]) == ("2x64x64", 3, 3)
    assert [sorted(row) for row in result["runs"]] == [["job_api_s", "repeat", "same_video", "stream_s"]]
    assert result["same_video"] is True and result["median_job_api_s"] > 0 and result["median_stream_s"] > 0
    assert result["overhead_s"] == result["median_job_api_s"] - result["median_stream_s"]
