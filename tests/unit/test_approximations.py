"""The opt-in approximations of the request contract: feature reuse (FEATURE_REUSE_INTERVAL) and guidance on
an interval of steps (GUIDANCE_INTERVAL). Off (their defaults, or given as the defaults) the video is the
exact one, bit for bit; on, each step calls the UNet as the approximation says, and the video moves by a
bounded error."""

import json

import numpy as np
import pytest
import torch

from openspeedy.errors import InvalidInput
from openspeedy.pipeline import I2VGenXL
from tests.unit.test_reference_parity import make_request

STEPS = 9


class RecordingModels:
    """The in-process components, recording what each UNet call asked for."""

    def __init__(self, local_models):
        self.local_models = local_models
        self.unet_calls: list[dict] = []

    def __call__(self, contract, inputs):
        if contract.name == "unet":
            self.unet_calls.append(dict(batch=inputs["SAMPLE"].shape[0], shallow="DEEP_FEATURES" in inputs,
                                        keeps="RETURN_DEEP_FEATURES" in inputs))
        return self.local_models(contract, inputs)


@pytest.fixture
def recording(tiny_checkpoint, local_models):
    models = RecordingModels(local_models)
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    return models, I2VGenXL(models, scheduler, scaling)


def request(**approximations):
    return make_request(NUM_INFERENCE_STEPS=np.array([STEPS], np.int32), **approximations)


def reuse(n):
    return {"FEATURE_REUSE_INTERVAL": np.array([n], np.int32)}


def interval(start, end):
    return {"GUIDANCE_INTERVAL": np.array([start, end], np.float32)}


@pytest.fixture(scope="module")
def exact(local_pipeline):
    return local_pipeline.denoise(request())


@pytest.mark.parametrize("approximations", [reuse(1), interval(0.0, 1.0), reuse(1) | interval(0.0, 1.0)])
def test_approximations_off_are_bit_identical(recording, exact, approximations):
    models, pipeline = recording
    assert torch.equal(pipeline.denoise(request(**approximations)), exact)
    assert all(call == dict(batch=2, shallow=False, keeps=False) for call in models.unet_calls)


def test_feature_reuse_runs_every_nth_step_in_full(recording, exact):
    models, pipeline = recording
    latents = pipeline.denoise(request(**reuse(3)))
    assert [c["keeps"] for c in models.unet_calls] == [step % 3 == 0 for step in range(STEPS)]
    assert [c["shallow"] for c in models.unet_calls] == [step % 3 != 0 for step in range(STEPS)]
    error = float((latents - exact).norm() / exact.norm())
    assert 0 < error < 0.5


def test_guidance_interval_runs_the_conditional_half_outside_it(recording, exact):
    models, pipeline = recording
    latents = pipeline.denoise(request(**interval(0.0, 0.5)))
    # steps 0..4 are inside [0, 0.5 * 9): CFG batch 2; the rest: the conditional row alone
    assert [c["batch"] for c in models.unet_calls] == [2] * 5 + [1] * 4
    assert not torch.equal(latents, exact)


def test_both_approximations_together(recording):
    models, pipeline = recording
    pipeline.denoise(request(**reuse(2), **interval(0.2, 0.7)))
    calls = models.unet_calls
    guided = [0.2 * STEPS <= step < 0.7 * STEPS for step in range(STEPS)]
    assert [c["batch"] == 2 for c in calls] == guided
    for step, call in enumerate(calls):
        # A step needing CFG after conditional-only features runs in full; so does every second step.
        if call["shallow"]:
            assert step % 2 == 1 and not (guided[step] and not guided[step - 1])


def test_same_approximation_same_video(local_pipeline):
    first = local_pipeline.denoise(request(**reuse(3), **interval(0.0, 0.6)))
    assert torch.equal(local_pipeline.denoise(request(**reuse(3), **interval(0.0, 0.6))), first)


@pytest.mark.parametrize(
    "inputs, match",
    [
        (interval(0.5, 0.5), "GUIDANCE_INTERVAL.*start < end"),
        (interval(0.8, 0.2), r"GUIDANCE_INTERVAL.*got \(0\.8, 0\.2\)$"),  # as sent, not as float64
        (interval(-0.1, 0.5), "GUIDANCE_INTERVAL"),
        (interval(0.0, 1.5), "GUIDANCE_INTERVAL"),
        (interval(float("nan"), 0.5), "GUIDANCE_INTERVAL"),
        ({"GUIDANCE_INTERVAL": np.array([0.0, 0.5, 1.0], np.float32)}, "GUIDANCE_INTERVAL.*shape \\[2\\]"),
        ({"GUIDANCE_INTERVAL": np.array([0.0, 0.5], np.float64)}, "GUIDANCE_INTERVAL.*FP32"),
        (reuse(0), "FEATURE_REUSE_INTERVAL.*between 1 and 10"),
        (reuse(11), "FEATURE_REUSE_INTERVAL.*between 1 and 10"),
        ({"FEATURE_REUSE_INTERVAL": np.array([2], np.int64)}, "FEATURE_REUSE_INTERVAL.*INT32"),
    ],
)
def test_bad_approximation_inputs_are_named(inputs, match):
    with pytest.raises(InvalidInput, match=match):
        request(**inputs)


def test_client_sends_the_approximations_as_the_contract_declares_them():
    from openspeedy.client.api import request_arrays

    arrays = request_arrays(b"png", "x", guidance_interval=(0.0, 0.6), feature_reuse_interval=3)
    interval = arrays["GUIDANCE_INTERVAL"]
    assert interval.dtype == np.float32 and interval.shape == (2,)
    np.testing.assert_allclose(interval, [0.0, 0.6])
    assert arrays["FEATURE_REUSE_INTERVAL"].dtype == np.int32 and arrays["FEATURE_REUSE_INTERVAL"].tolist() == [3]


def test_optional_outputs_are_asked_for_only_with_their_return_input():
    from openspeedy.contracts import UNET

    assert UNET.outputs_for({"SAMPLE": 0}) == ("NOISE_PRED",)
    assert UNET.outputs_for({"SAMPLE": 0, "RETURN_DEEP_FEATURES": 1}) == ("NOISE_PRED", "DEEP_FEATURES")
