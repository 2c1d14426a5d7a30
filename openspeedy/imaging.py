"""Image decoding with limits, and the reference pipeline's crops."""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps

from openspeedy.errors import InvalidInput

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, input_name: str = "IMAGE") -> PIL.Image.Image:
    """Decodes an encoded image file to RGB, refusing what is too large before decoding its pixels."""
    if not data:
        raise InvalidInput(input_name, "must be a non-empty encoded image file (PNG, JPEG, WebP or BMP)")
    if len(data) > max_bytes:
        raise InvalidInput(input_name, f"is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below 2x its global limit; ours below is exact and per-model.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(
                    input_name, f"is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
                )
            image.load()
    except InvalidInput:
        raise
    except PIL.Image.DecompressionBombError as error:
        raise InvalidInput(input_name, f"is too large to decode: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidInput(
            input_name, f"could not be decoded as PNG, JPEG, WebP or BMP ({type(error).__name__}: {error})"
        ) from None
    # EXIF orientation, then RGB: what diffusers' load_image does for the reference pipeline (its two
    # lines, restated: importing diffusers takes seconds, and the job API and UI validate uploads here).
    return PIL.ImageOps.exif_transpose(image).convert("RGB")


# The two crops below reproduce the reference I2VGenXLPipeline (diffusers, after ali-vilab/i2vgen-xl
# utils/transforms.py) bit for bit. diffusers keeps them private in a deprecated module, so they are
# restated here; tests/unit/test_reference_parity.py holds them to the original.


def center_crop_wide(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Box-resizes so the image covers ``size`` = (width, height), then crops the centre."""
    scale = min(image.size[0] / size[0], image.size[1] / size[1])
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=PIL.Image.BOX)
    left = (image.width - size[0]) // 2
    top = (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def crop_growth(image_size: tuple[int, int], size: tuple[int, int]) -> float:
    """How many times the output's pixels ``center_crop_wide`` resizes an image to before cropping: the
    resize covers ``size`` while keeping the image's aspect ratio, so the surplus is the ratio of the two
    aspect ratios (1 when they agree)."""
    image_aspect = image_size[0] / image_size[1]
    size_aspect = size[0] / size[1]
    return max(image_aspect / size_aspect, size_aspect / image_aspect)


def check_crop_growth(image_size: tuple[int, int], sizes: tuple[tuple[int, int], ...], limit: float,
                      input_name: str = "IMAGE") -> None:
    """Refuses an image whose crop to one of ``sizes`` would first resize it past ``limit`` times that size's
    pixels: a 1x2000 PNG of 94 bytes cropped to 512x512 would otherwise be resized to 512x1024000 (1.5 GB)."""
    for size in sizes:
        growth = crop_growth(image_size, size)
        if growth > limit:
            raise InvalidInput(
                input_name,
                f"aspect ratio {_ratio(*image_size)} (width:height) is beyond the limit for a "
                f"{sizes[-1][0]}x{sizes[-1][1]} video: its crop to {size[0]}x{size[1]} would first resize it to "
                f"{growth:.0f} times that size; the limit is {limit:g} times (an image at most {limit:g} times "
                f"wider or taller than the video and than a square)",
            )


def _ratio(width: int, height: int) -> str:
    def number(value: float) -> str:
        return f"{value:.0f}" if value >= 10 else f"{value:.3g}"

    return f"{number(width / height)}:1" if width >= height else f"1:{number(height / width)}"


def to_uint8_batch(image: PIL.Image.Image) -> np.ndarray:
    """An RGB PIL image as a [1, H, W, 3] uint8 array."""
    return np.array(image, dtype=np.uint8)[None]  # a writable copy, so torch.from_numpy may share it
