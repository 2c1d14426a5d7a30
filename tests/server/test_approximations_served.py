"""The opt-in approximations through a real tritonserver: the unet's deep features travel between steps as
BLS tensors, and the served video is the in-process one (to the one uint8 step serving may add, see
tests/unit/test_reference_parity.py); given as their defaults, the approximations leave the served video exact."""

import numpy as np
import pytest

from openspeedy.client import Client
from openspeedy.client.api import request_arrays
from tests.unit.test_reference_parity import make_request

APPROXIMATIONS = {
    "FEATURE_REUSE_INTERVAL": np.array([3], np.int32),
    "GUIDANCE_INTERVAL": np.array([0.0, 0.6], np.float32),
}


def served(triton, request, **approximations):
    arrays = request_arrays(request.image_bytes, request.prompt, num_frames=request.num_frames,
                            height=request.height, width=request.width, seed=request.seed,
                            num_inference_steps=request.num_inference_steps)
    with Client(triton.grpc_url) as client:
        return client.infer_arrays(arrays | approximations, ("VIDEO",))["VIDEO"]


@pytest.fixture(scope="module")
def request_():
    return make_request()


def test_served_approximations_match_in_process(triton, local_pipeline, request_):
    approximate = make_request(**APPROXIMATIONS)
    expected = local_pipeline.generate(approximate).numpy()
    video = served(triton, request_, **APPROXIMATIONS)
    delta = np.abs(video.astype(np.int16) - expected.astype(np.int16))
    assert delta.max() <= 1 and (delta > 0).mean() <= 1e-3
    assert not np.array_equal(video, served(triton, request_))  # the approximations did change the video


def test_served_approximations_at_their_defaults_are_exact(triton, request_):
    off = {"FEATURE_REUSE_INTERVAL": np.array([1], np.int32), "GUIDANCE_INTERVAL": np.array([0.0, 1.0], np.float32)}
    assert np.array_equal(served(triton, request_, **off), served(triton, request_))


def test_served_bad_approximation_is_named(triton, request_):
    from openspeedy.client import GenerationError

    with pytest.raises(GenerationError, match="FEATURE_REUSE_INTERVAL"):
        served(triton, request_, FEATURE_REUSE_INTERVAL=np.array([0], np.int32))
    assert served(triton, request_).shape[0] == request_.num_frames  # and the server goes on serving
