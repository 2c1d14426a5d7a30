"""The public request: defaults, limits and validation of every input of the entry models' contract."""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import PIL.Image

from openspeedy.contracts import I2VGEN_XL, I2VGEN_XL_STREAM, PREVIEW_INTERVAL_RULE, ModelContract
from openspeedy.errors import InvalidInput
from openspeedy.imaging import check_crop_growth, decode_image


@dataclass(frozen=True)
class RequestSettings:
    """Defaults of the optional inputs and the limits every request is held to.

    The export step writes them into the entry models' config ``parameters`` (for the real weights,
    the reference pipeline's defaults), so an operator tunes them without touching code.
    """

    default_num_frames: int = 16
    default_height: int = 704
    default_width: int = 1280
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 9.0
    default_target_fps: int = 16
    default_decode_chunk_size: int = 0
    default_guidance_interval_start: float = 0.0
    default_guidance_interval_end: float = 1.0
    default_feature_reuse_interval: int = 1
    min_size: int = 64
    max_size: int = 2048
    max_num_frames: int = 64
    max_num_inference_steps: int = 250
    max_guidance_scale: float = 50.0
    max_target_fps: int = 120
    max_decode_chunk_size: int = 1024
    max_feature_reuse_interval: int = 10
    max_frames_x_pixels: int = 64 * 1024 * 1024  # NUM_FRAMES * HEIGHT * WIDTH
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 64 * 1024 * 1024
    # The crops resize the image to cover the video before cutting it: at most this many times the video's
    # pixels, which bounds an image's aspect ratio relative to the video's and to a square.
    max_crop_growth: float = 8.0
    max_prompt_bytes: int = 16 * 1024
    # A generation running longer is stopped with an error (0: no limit); the published model at its largest
    # sizes takes minutes on one GPU.
    max_request_seconds: float = 600.0

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "RequestSettings":
        """Reads the fields present in ``parameters`` (strings, as in a Triton config), keeping defaults."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in parameters:
                values[field.name] = float(parameters[field.name]) if field.type == "float" else int(
                    parameters[field.name]
                )
        return cls(**values)

    def as_parameters(self) -> dict[str, str]:
        return {name: str(value) for name, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class GenerationRequest:
    image: PIL.Image.Image | None  # None while it waits (without_pixels)
    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    target_fps: int
    seed: int
    decode_chunk_size: int
    image_bytes: bytes = b""  # the encoded file, for caches keyed on what the client sent
    # Opt-in approximations; the defaults leave the video exact.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    feature_reuse_interval: int = 1
    preview_interval: int = 0  # stream model only: a preview every N steps, 0: none

    def without_pixels(self) -> "GenerationRequest":
        """The request as it waits its turn: the image as the client's file only (eight decoded
        64-megapixel images would hold 1.5 GB meanwhile); ``with_pixels`` decodes it again."""
        return dataclasses.replace(self, image=None)

    def with_pixels(self, settings: RequestSettings) -> "GenerationRequest":
        if self.image is not None:
            return self
        image = decode_image(self.image_bytes, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        return dataclasses.replace(self, image=image)

    def previews_at(self, step: int) -> bool:
        """Whether the stream sends a preview after ``step`` steps (1-based)."""
        return self.preview_interval > 0 and step % self.preview_interval == 0

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def guided(self, step: int, total: int) -> bool:
        """Whether denoising step ``step`` (0-based, of ``total``) uses CFG: inside the guidance interval."""
        start, end = self.guidance_interval
        return self.do_classifier_free_guidance and start * total <= step < end * total


def _array(inputs: Mapping[str, Any], name: str) -> np.ndarray | None:
    """An optional input as an array, after checking its dtype and the contract's shape; None if absent."""
    value = inputs.get(name)
    if value is None:
        return None
    spec = I2VGEN_XL_STREAM.input(name)  # the stream model's inputs: the plain model's and its own
    array = np.asarray(value)
    if spec.datatype == "BYTES":
        if array.dtype != object and array.dtype.kind not in "SU":
            raise InvalidInput(name, f"must be BYTES, got {array.dtype}")
    elif array.dtype != spec.numpy_dtype:
        raise InvalidInput(name, f"must be {spec.datatype}, got {array.dtype}")
    if array.shape != spec.dims:
        raise InvalidInput(name, f"must have shape {list(spec.dims)}, got {list(array.shape)}")
    return array


def _scalar(inputs: Mapping[str, Any], name: str) -> Any | None:
    """The single element of an optional [1] input, checked as ``_array`` does; None if absent."""
    array = _array(inputs, name)
    return None if array is None else array[0]


def _interval(inputs: Mapping[str, Any], settings: RequestSettings) -> tuple[float, float]:
    name = "GUIDANCE_INTERVAL"
    array = _array(inputs, name)
    if array is None:
        return settings.default_guidance_interval_start, settings.default_guidance_interval_end
    start, end = (float(v) for v in array)
    if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start < end <= 1.0):
        # str() of a float32 is its shortest form: 0.8 as the client sent it, not the float64 0.800000011920929
        raise InvalidInput(name, f"must be fractions of the steps with 0 <= start < end <= 1, "
                                 f"got ({array[0]!s}, {array[1]!s})")
    return start, end


def _text(inputs: Mapping[str, Any], name: str, settings: RequestSettings) -> str:
    raw = _scalar(inputs, name)
    if raw is None:
        return ""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    raw = bytes(raw)
    if len(raw) > settings.max_prompt_bytes:
        raise InvalidInput(name, f"is {len(raw)} bytes; the limit is {settings.max_prompt_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(name, f"must be valid UTF-8 ({error})") from None


def _integer(inputs: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = _scalar(inputs, name)
    value = default if value is None else int(value)
    if not low <= value <= high:
        raise InvalidInput(name, f"must be between {low} and {high}, got {value}")
    return value


def _preview_interval(inputs: Mapping[str, Any], steps: int) -> int:
    name = "PREVIEW_INTERVAL"
    value = _scalar(inputs, name)
    value = 0 if value is None else int(value)
    if not 0 <= value <= steps:
        raise InvalidInput(name, f"must be {PREVIEW_INTERVAL_RULE} ({steps}), got {value}")
    return value


def parse_request(inputs: Mapping[str, Any], settings: RequestSettings,
                  contract: ModelContract = I2VGEN_XL) -> GenerationRequest:
    """Validates raw request tensors (numpy arrays keyed by input name) into a GenerationRequest, by the
    inputs of ``contract`` (the plain or the stream entry model).

    Raises InvalidInput naming the first input that breaks a rule.
    """
    known = set(contract.input_names)
    for name in inputs:
        if name not in known:
            raise InvalidInput(name, f"is not an input of this model; inputs are {sorted(known)}")
    for spec in contract.inputs:
        if not spec.optional and inputs.get(spec.name) is None:
            raise InvalidInput(spec.name, "is required")

    s = settings
    height = _integer(inputs, "HEIGHT", s.default_height, s.min_size, s.max_size)
    width = _integer(inputs, "WIDTH", s.default_width, s.min_size, s.max_size)
    for name, size in (("HEIGHT", height), ("WIDTH", width)):
        if size % 8:
            raise InvalidInput(name, f"must be a multiple of 8, got {size}")
    num_frames = _integer(inputs, "NUM_FRAMES", s.default_num_frames, 1, s.max_num_frames)
    if num_frames * height * width > s.max_frames_x_pixels:
        raise InvalidInput(
            "NUM_FRAMES",
            f"NUM_FRAMES x HEIGHT x WIDTH = {num_frames}x{height}x{width} exceeds the limit of "
            f"{s.max_frames_x_pixels} frame pixels",
        )
    guidance = _scalar(inputs, "GUIDANCE_SCALE")
    guidance = s.default_guidance_scale if guidance is None else float(guidance)
    if not math.isfinite(guidance) or not 0.0 <= guidance <= s.max_guidance_scale:
        raise InvalidInput("GUIDANCE_SCALE", f"must be a finite number between 0 and {s.max_guidance_scale}")
    seed = _scalar(inputs, "SEED")
    seed = secrets.randbelow(2**63) if seed is None else int(seed)
    if seed < 0:
        raise InvalidInput("SEED", f"must be >= 0, got {seed}")

    prompt = _text(inputs, "PROMPT", s)
    negative_prompt = _text(inputs, "NEGATIVE_PROMPT", s)
    image_bytes = _scalar(inputs, "IMAGE")
    image_bytes = image_bytes.encode() if isinstance(image_bytes, str) else bytes(image_bytes)
    image = decode_image(image_bytes, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)
    # The pipeline crops the image twice: a square for the image encoder, the video's size for the VAE.
    check_crop_growth(image.size, ((width, width), (width, height)), s.max_crop_growth)

    steps = _integer(inputs, "NUM_INFERENCE_STEPS", s.default_num_inference_steps, 1, s.max_num_inference_steps)
    return GenerationRequest(
        image=image,
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        target_fps=_integer(inputs, "TARGET_FPS", s.default_target_fps, 1, s.max_target_fps),
        seed=seed,
        decode_chunk_size=_integer(
            inputs, "DECODE_CHUNK_SIZE", s.default_decode_chunk_size, 0, s.max_decode_chunk_size
        ),
        image_bytes=image_bytes,
        guidance_interval=_interval(inputs, s),
        feature_reuse_interval=_integer(
            inputs, "FEATURE_REUSE_INTERVAL", s.default_feature_reuse_interval, 1, s.max_feature_reuse_interval
        ),
        preview_interval=_preview_interval(inputs, steps),
    )
