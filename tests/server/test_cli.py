"""The command line: generate over gRPC and HTTP, and the demo end to end."""

import subprocess
import sys

import pytest

from openspeedy.video import decode_video
from tests.helpers import free_port

pytestmark = pytest.mark.server
OPENSPEEDY = [sys.executable, "-m", "openspeedy.cli"]


@pytest.mark.parametrize("protocol, suffix", [("grpc", ".mp4"), ("http", ".gif"), ("http", ".mp4")])
def test_generate_writes_a_video(triton, tmp_path, protocol, suffix):
    out = tmp_path / f"video{suffix}"
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    image = tmp_path / "in.png"
    from tests.helpers import random_image

    random_image().save(image)
    result = subprocess.run(
        OPENSPEEDY + ["generate", "--image", str(image), "--prompt", "a cat", "--out", str(out), "--protocol",
                      protocol, "--url", url, "--num-frames", "5", "--height", "64", "--width", "96", "--steps",
                      "3", "--seed", "9"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert decode_video(out.read_bytes(), suffix).shape == (5, 64, 96, 3)


def test_generate_reports_a_bad_request(triton, tmp_path):
    from tests.helpers import random_image

    image = tmp_path / "in.png"
    random_image().save(image)
    result = subprocess.run(
        OPENSPEEDY + ["generate", "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "v.mp4"),
                      "--url", triton.grpc_url, "--height", "63"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "invalid input 'HEIGHT': must be a multiple of 8" in result.stderr


def test_demo_writes_a_playable_video(tiny_repository, tmp_path):
    out = tmp_path / "demo.mp4"
    result = subprocess.run(
        OPENSPEEDY + ["demo", "--out", str(out), "--model-repository", str(tiny_repository),
                      "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                      "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert decode_video(out.read_bytes()).shape == (16, 128, 192, 3)
