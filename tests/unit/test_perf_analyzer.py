"""bench/perf_analyzer/run.py without a server: its input data, parsers and commands (tests/server runs it
against the tiny repository).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.perf_analyzer import run as harness

SETTINGS = dict(num_frames=2, height=32, width=32, num_inference_steps=2, guidance_scale=9.0, seed=1)


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
