"""The onnxruntime `unet` behind a real tritonserver serves the video PyTorch serves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import encode, free_port, random_image


@pytest.fixture(scope="module")
def triton_onnxruntime(onnxruntime_repository):
    """A second real tritonserver, on the repository whose `unet` runs on onnxruntime."""
    from openspeedy.server import ServerOptions, TritonServer

    options = ServerOptions(onnxruntime_repository, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    log = Path("build/test-logs/triton_onnxruntime.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    server = TritonServer(options, log_path=log).start()
    yield server
    assert server.stop() == 0, f"tritonserver did not stop cleanly; see {log}"


IMAGE = encode(random_image(120, 80, seed=7))


@pytest.mark.server
@pytest.mark.parametrize("request_options", [
    dict(num_frames=8, height=64, width=64, guidance_scale=9.0),
    dict(num_frames=5, height=96, width=40, guidance_scale=9.0),  # latent 12x5: not multiples of 8
    dict(num_frames=3, height=64, width=96, guidance_scale=1.0),  # no CFG: UNet batch 1
], ids=["cfg-64x64", "cfg-96x40", "nocfg-64x96"])
def test_served_video_is_the_same_with_onnxruntime_and_pytorch(triton, triton_onnxruntime, request_options):
    # Tolerance: one uint8 level. The two runtimes agree to ~1e-6 relative per UNet call (FP32,
    # different kernels and summation orders); over the denoising steps that moves the decoded pixels
    # by far less than a level, so a pixel can differ only where its value sits at a rounding boundary
    # of the uint8 conversion, and then by exactly one level.
    from openspeedy.client import Client

    with Client(triton.grpc_url, "grpc") as torch_client, Client(triton_onnxruntime.grpc_url, "grpc") as ort_client:
        expected = torch_client.generate(IMAGE, "a red boat", seed=3, num_inference_steps=4, **request_options).frames
        got = ort_client.generate(IMAGE, "a red boat", seed=3, num_inference_steps=4, **request_options).frames
    assert got.shape == expected.shape
    difference = np.abs(got.astype(int) - expected.astype(int))
    assert difference.max() <= 1, difference.max()
    assert (difference > 0).mean() < 0.001  # measured in process: at most 0.005 % of the values
    assert not math.isnan(float(got.mean()))
