"""Validation of every input of the public contract: each bad input is named with its rule."""

import numpy as np
import PIL.Image
import pytest

from openspeedy.errors import InvalidInput
from openspeedy.request import RequestSettings, parse_request
from tests.helpers import encode, random_image

SETTINGS = RequestSettings(default_height=64, default_width=64, default_num_frames=8, min_size=32, max_size=512,
                           max_num_frames=32, max_frames_x_pixels=32 * 256 * 256, max_image_bytes=1 << 20,
                           max_image_pixels=1 << 20, max_prompt_bytes=256)


def good(**overrides):
    inputs = {
        "IMAGE": np.array([encode(random_image())], dtype=object),
        "PROMPT": np.array([b"a cat"], dtype=object),
    }
    inputs.update(overrides)
    return inputs


def int32(v):
    return np.array([v], dtype=np.int32)


def test_defaults_come_from_settings():
    request = parse_request(good(), SETTINGS)
    assert (request.num_frames, request.height, request.width) == (8, 64, 64)
    assert request.num_inference_steps == SETTINGS.default_num_inference_steps
    assert request.guidance_scale == SETTINGS.default_guidance_scale
    assert request.negative_prompt == "" and request.prompt == "a cat"
    assert 0 <= request.seed < 2**63
    assert request.image.mode == "RGB" and request.image.size == (120, 80)


def test_settings_round_trip_through_parameters():
    assert RequestSettings.from_parameters(SETTINGS.as_parameters()) == SETTINGS


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("NUM_FRAMES", int32(0), "between 1 and 32"),
        ("NUM_FRAMES", int32(33), "between 1 and 32"),
        ("HEIGHT", int32(68), "multiple of 8"),
        ("WIDTH", int32(100), "multiple of 8"),
        ("HEIGHT", int32(16), "between 32 and 512"),
        ("WIDTH", int32(4096), "between 32 and 512"),
        ("NUM_INFERENCE_STEPS", int32(0), "between 1"),
        ("GUIDANCE_SCALE", np.array([np.nan], np.float32), "finite"),
        ("GUIDANCE_SCALE", np.array([-1.0], np.float32), "between 0"),
        ("TARGET_FPS", int32(0), "between 1"),
        ("SEED", np.array([-5], np.int64), ">= 0"),
        ("DECODE_CHUNK_SIZE", int32(-1), "between 0"),
        ("NUM_FRAMES", np.array([8], np.int64), "must be INT32"),
        ("HEIGHT", np.array([64, 64], np.int32), "shape [1]"),
        ("PROMPT", np.array([b"\xff\xfe"], dtype=object), "UTF-8"),
        ("NEGATIVE_PROMPT", np.array([b"\xc3"], dtype=object), "UTF-8"),
        ("PROMPT", np.array([b"x" * 300], dtype=object), "limit is 256 bytes"),
        ("PROMPT", np.array([1.0], np.float32), "must be BYTES"),
        ("IMAGE", np.array([b""], dtype=object), "non-empty"),
        ("IMAGE", np.array([b"not an image at all"], dtype=object), "could not be decoded"),
        ("BOGUS", int32(1), "not an input"),
    ],
)
def test_bad_input_is_named_with_its_rule(name, value, rule):
    with pytest.raises(InvalidInput) as error:
        parse_request(good(**{name: value}), SETTINGS)
    assert error.value.input_name == name
    assert rule in str(error.value) and f"'{name}'" in str(error.value)


@pytest.mark.parametrize("missing", ["IMAGE", "PROMPT"])
def test_required_inputs(missing):
    inputs = good()
    del inputs[missing]
    with pytest.raises(InvalidInput, match=f"'{missing}': is required"):
        parse_request(inputs, SETTINGS)


def test_frames_times_pixels_limit():
    with pytest.raises(InvalidInput, match="NUM_FRAMES x HEIGHT x WIDTH"):
        parse_request(good(NUM_FRAMES=int32(32), HEIGHT=int32(512), WIDTH=int32(512)), SETTINGS)


def test_decompression_bomb_is_refused_before_decoding():
    # A 2000x2000 PNG of one colour compresses to a few kB but is 4 M pixels: over the 1 M limit.
    bomb = encode(PIL.Image.new("L", (2000, 2000)))
    assert len(bomb) < SETTINGS.max_image_bytes
    with pytest.raises(InvalidInput, match="'IMAGE'.*limit is 1048576 pixels"):
        parse_request(good(IMAGE=np.array([bomb], dtype=object)), SETTINGS)


def test_oversized_file_is_refused():
    with pytest.raises(InvalidInput, match="'IMAGE'.*bytes; the limit"):
        parse_request(good(IMAGE=np.array([b"\x89PNG" + bytes(2 << 20)], dtype=object)), SETTINGS)


def test_truncated_and_unsupported_images():
    png = encode(random_image())
    with pytest.raises(InvalidInput, match="could not be decoded"):
        parse_request(good(IMAGE=np.array([png[: len(png) // 2]], dtype=object)), SETTINGS)
    gif = encode(random_image(), "GIF")
    with pytest.raises(InvalidInput, match="could not be decoded as PNG, JPEG, WebP or BMP"):
        parse_request(good(IMAGE=np.array([gif], dtype=object)), SETTINGS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_formats_and_modes_decode_to_rgb(fmt, mode):
    image = random_image(mode=mode)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        image = image.convert("RGB")
    request = parse_request(good(IMAGE=np.array([encode(image, fmt)], dtype=object)), SETTINGS)
    assert request.image.mode == "RGB" and request.image.size == image.size


def test_exif_orientation_is_applied():
    image = random_image(120, 80)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    request = parse_request(good(IMAGE=np.array([encode(image, "JPEG", exif=exif)], dtype=object)), SETTINGS)
    assert request.image.size == (80, 120)


@pytest.mark.parametrize("mode, file_format", [("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "WEBP")])
def test_decoded_images_equal_diffusers_load_image(mode, file_format):
    """The reference pipeline reads images through diffusers' load_image: the same pixels, EXIF rotation too."""
    import io

    from diffusers.utils import load_image

    from openspeedy.imaging import decode_image

    exif = PIL.Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise on display
    data = encode(random_image(40, 24).convert(mode), file_format, exif=exif)
    ours = decode_image(data, max_bytes=len(data), max_pixels=40 * 24)
    reference = load_image(PIL.Image.open(io.BytesIO(data)))
    assert ours.mode == "RGB" and ours.size == (24, 40)  # rotated
    assert np.array_equal(np.asarray(ours), np.asarray(reference))


def test_an_extreme_aspect_ratio_is_refused_before_any_crop():
    # A 1x2000 PNG of about 100 bytes: its 512x512 crop would first resize it to 512x1024000 pixels.
    banner = encode(PIL.Image.new("RGB", (1, 2000)))
    with pytest.raises(InvalidInput) as caught:
        parse_request(good(IMAGE=np.array([banner], dtype=object), HEIGHT=int32(512), WIDTH=int32(512)), SETTINGS)
    assert caught.value.input_name == "IMAGE"
    assert "aspect ratio 1:2000 (width:height) is beyond the limit for a 512x512 video" in str(caught.value)
    assert "the limit is 8 times" in str(caught.value)


@pytest.mark.parametrize(
    "image_size, video_size, accepted",
    [
        ((1280, 704), (1280, 704), True),  # the usual: the video's own aspect ratio
        ((720, 1280), (1280, 704), True),  # a phone portrait for a landscape video: 3.2 times
        ((256, 64), (64, 64), True),  # 4:1 at a square
        ((64, 576), (64, 64), False),  # 1:9 at a square
        ((512, 64), (512, 64), True),  # 8:1 at its own aspect ratio: the square crop grows 8 times, the limit
        ((640, 64), (640, 64), False),  # 10:1 at its own aspect ratio: the square crop would grow 10 times
    ],
)
def test_crop_growth_bounds_the_aspect_ratio_against_the_video_and_a_square(image_size, video_size, accepted):
    image = encode(PIL.Image.new("RGB", image_size))
    inputs = good(IMAGE=np.array([image], dtype=object), WIDTH=int32(video_size[0]), HEIGHT=int32(video_size[1]))
    settings = RequestSettings(min_size=32, max_size=1280, max_frames_x_pixels=64 * 1280 * 1280)
    if accepted:
        assert parse_request(inputs, settings).image.size == image_size
    else:
        with pytest.raises(InvalidInput, match="aspect ratio .* is beyond the limit"):
            parse_request(inputs, settings)


def test_crop_growth_is_the_resize_the_crop_makes(monkeypatch):
    from openspeedy.imaging import center_crop_wide, crop_growth

    image = PIL.Image.new("RGB", (100, 300))
    resized = []
    original_resize = PIL.Image.Image.resize
    monkeypatch.setattr(PIL.Image.Image, "resize",
                        lambda self, size, **options: resized.append(size) or original_resize(self, size, **options))
    center_crop_wide(image, (64, 32))
    (width, height), = resized
    assert width * height / (64 * 32) == pytest.approx(crop_growth(image.size, (64, 32)), rel=0.02)


def test_a_waiting_request_keeps_the_file_not_the_pixels_and_decodes_it_again_the_same():
    request = parse_request(good(), SETTINGS)
    waiting = request.without_pixels()
    assert waiting.image is None and waiting.image_bytes == request.image_bytes and waiting.seed == request.seed
    again = waiting.with_pixels(SETTINGS)
    assert again.image.tobytes() == request.image.tobytes() and again == request.with_pixels(SETTINGS)
