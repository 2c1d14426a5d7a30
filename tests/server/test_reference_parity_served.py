"""The served video against diffusers' I2VGenXLPipeline (tests/unit/test_reference_parity.py says how the
reference runs and why the served frames may differ by one uint8 step)."""

import pytest

from tests.unit.test_reference_parity import assert_close_to_reference, make_request, run_reference


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_video_matches_reference(triton, reference, protocol):
    from openspeedy.client import Client

    request = make_request()
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    with Client(url, protocol) as client:
        video = client.generate(
            request.image_bytes, request.prompt, num_frames=request.num_frames, height=request.height,
            width=request.width, num_inference_steps=request.num_inference_steps, seed=request.seed,
        )
    assert_close_to_reference(video.frames, run_reference(reference, request))
