"""OpenSpeedy's pipeline against diffusers' I2VGenXLPipeline on the same tiny weights, inputs and seed.

How the reference runs: diffusers 0.42's I2VGenXLPipeline loaded from the tiny checkpoint, on the CPU
in float32, with ``generator=torch.Generator().manual_seed(seed)`` for the initial noise and the
global torch seed set to ``posterior_seed(seed)`` (the reference draws its VAE posterior sample from
the global generator; OpenSpeedy draws it from a generator seeded with that derived seed). Its float
frames are rounded to uint8 like its own ``numpy_to_pil``.

In process the frames are identical, bit for bit. Through the server they may differ by one uint8 step
on at most 0.1% of the values (observed: 0.007%, on gRPC and HTTP alike): the tensors then cross
process boundaries through Triton's shared memory, and float32 CPU kernels can take another code path
for another memory placement. The cause was not tracked further; the bound is asserted.
"""

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.i2vgen_xl import pipeline_i2vgen_xl as reference_module

from openspeedy.imaging import center_crop_wide
from openspeedy.pipeline import posterior_seed
from openspeedy.request import RequestSettings, parse_request
from tests.helpers import encode, random_image


def run_reference(pipe, request):
    torch.manual_seed(posterior_seed(request.seed))
    frames = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        image=request.image,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        target_fps=request.target_fps,
        generator=torch.Generator().manual_seed(request.seed),
        decode_chunk_size=request.decode_chunk_size or None,
        output_type="np",
    ).frames[0]
    return (frames * 255).round().astype(np.uint8)


def assert_close_to_reference(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert difference.max() <= 1, f"max difference {difference.max()}"
    assert (difference > 0).mean() <= 0.001


def make_request(**overrides):
    inputs = {
        "IMAGE": np.array([encode(random_image(150, 100, seed=3))], dtype=object),
        "PROMPT": np.array([b"a red boat on a lake"], dtype=object),
        "NUM_FRAMES": np.array([6], np.int32),
        "HEIGHT": np.array([64], np.int32),
        "WIDTH": np.array([96], np.int32),
        "NUM_INFERENCE_STEPS": np.array([8], np.int32),
        "SEED": np.array([1234], np.int64),
    }
    inputs.update(overrides)
    return parse_request(inputs, RequestSettings(min_size=32))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"NEGATIVE_PROMPT": np.array([b"blurry"], dtype=object), "GUIDANCE_SCALE": np.array([5.0], np.float32)},
        {"GUIDANCE_SCALE": np.array([1.0], np.float32)},  # CFG off
        {"HEIGHT": np.array([96], np.int32), "WIDTH": np.array([64], np.int32), "TARGET_FPS": np.array([8], np.int32)},
        {"NUM_FRAMES": np.array([1], np.int32)},
        {"DECODE_CHUNK_SIZE": np.array([4], np.int32)},
    ],
    ids=["default", "negative-prompt", "no-cfg", "portrait-fps8", "one-frame", "chunked"],
)
def test_in_process_pipeline_matches_reference(local_pipeline, reference, overrides):
    request = make_request(**overrides)
    ours = local_pipeline.generate(request).numpy()
    theirs = run_reference(reference, request)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), "in process, the pipeline is the reference's arithmetic: bit for bit"


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (64, 128), (40, 200)])
@pytest.mark.parametrize("source", [(150, 100), (100, 150), (30, 20), (1000, 999)])
def test_center_crop_is_the_reference_crop(size, source):
    image = random_image(*source)
    ours = center_crop_wide(image, size)
    theirs = reference_module._center_crop_wide(image, size)
    assert ours.size == theirs.size == size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
