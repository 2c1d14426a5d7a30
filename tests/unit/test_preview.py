"""Live previews: the latent-to-RGB strip, the PREVIEW_INTERVAL rule, and the pipeline's prediction hook."""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from openspeedy.contracts import I2VGEN_XL, I2VGEN_XL_STREAM
from openspeedy.errors import InvalidInput
from openspeedy.preview import LATENT_RGB_FACTORS, latents_to_rgb, preview_png
from openspeedy.request import RequestSettings, parse_request
from tests.helpers import encode, random_image


def latents(frames=6, seed=0):
    return torch.randn(1, 4, frames, 8, 12, generator=torch.Generator().manual_seed(seed))


def test_latents_map_to_rgb_frames_at_latent_resolution():
    rgb = latents_to_rgb(latents())
    assert rgb.shape == (6, 8, 12, 3) and rgb.dtype == torch.uint8


def test_the_mapping_is_the_published_linear_approximation():
    one = torch.zeros(1, 4, 1, 1, 1)
    one[0, 3] = 1.0  # the fourth channel alone: its row of factors, from [-1, 1] to [0, 255]
    expected = ((LATENT_RGB_FACTORS[3] + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(latents_to_rgb(one)[0, 0, 0], expected)
    assert torch.equal(latents_to_rgb(torch.zeros(1, 4, 1, 1, 1))[0, 0, 0], torch.tensor([128, 128, 128],
                                                                                          dtype=torch.uint8))


def test_preview_is_a_png_strip_of_a_few_frames_that_follows_the_latents():
    png = preview_png(latents(frames=6))
    image = PIL.Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (4 * 12, 8)
    assert preview_png(latents(frames=6, seed=1)) != png
    assert PIL.Image.open(io.BytesIO(preview_png(latents(frames=2)))).size == (2 * 12, 8)  # fewer frames than 4


def test_other_latent_channel_counts_are_refused():
    with pytest.raises(ValueError, match="needs 4 latent channels, got 8"):
        latents_to_rgb(torch.zeros(1, 8, 1, 2, 2))


def stream_inputs(**overrides):
    inputs = {"IMAGE": np.array([encode(random_image())], dtype=object), "PROMPT": np.array([b"x"], dtype=object),
              "NUM_INFERENCE_STEPS": np.array([6], np.int32)}
    return inputs | overrides


def interval(n):
    return {"PREVIEW_INTERVAL": np.array([n], np.int32)}


def test_preview_interval_is_off_by_default_and_marks_its_steps():
    settings = RequestSettings()
    assert parse_request(stream_inputs(), settings, I2VGEN_XL_STREAM).preview_interval == 0
    request = parse_request(stream_inputs(**interval(2)), settings, I2VGEN_XL_STREAM)
    assert [step for step in range(1, 7) if request.previews_at(step)] == [2, 4, 6]
    assert not any(parse_request(stream_inputs(), settings, I2VGEN_XL_STREAM).previews_at(s) for s in range(1, 7))


@pytest.mark.parametrize("value", [-1, 7])
def test_preview_interval_outside_the_steps_is_named_with_its_rule(value):
    with pytest.raises(InvalidInput, match=rf"invalid input 'PREVIEW_INTERVAL': must be 0 \(off\) up to "
                                           rf"NUM_INFERENCE_STEPS \(6\), got {value}"):
        parse_request(stream_inputs(**interval(value)), RequestSettings(), I2VGEN_XL_STREAM)


def test_the_plain_model_has_no_preview_interval():
    assert "PREVIEW_INTERVAL" not in I2VGEN_XL.input_names and "PREVIEW" not in I2VGEN_XL.output_names
    with pytest.raises(InvalidInput, match="'PREVIEW_INTERVAL': is not an input of this model"):
        parse_request(stream_inputs(**interval(2)), RequestSettings())


def test_the_pipeline_hands_each_steps_prediction_to_the_hook_and_the_video_is_unchanged(local_pipeline):
    from tests.unit.test_reference_parity import make_request

    request = make_request(NUM_INFERENCE_STEPS=np.array([4], np.int32))
    seen = []
    with_hook = local_pipeline.denoise(request, on_prediction=lambda done, total, x0: seen.append((done, total,
                                                                                                  x0.clone())))
    assert torch.equal(with_hook, local_pipeline.denoise(request))
    assert [(done, total) for done, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(x0.shape == with_hook.shape for *_, x0 in seen)
    assert not torch.equal(seen[0][2], seen[-1][2])  # the prediction sharpens as the steps go
