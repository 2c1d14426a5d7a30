"""Small hostile inputs for the limits tests: each costs its sender almost nothing and, unchecked, costs the
server a great deal.

Not merged with tests/server/hostile_corpus.py: these are tensor values (an image, prompts, latents), sent
through tritonclient as well-formed requests, that tritonserver accepts and the models must refuse by their
limits; that module holds whole malformed HTTP requests, sent on raw sockets, which the HTTP guard must
stop before tritonserver parses them."""

from __future__ import annotations

import numpy as np
import PIL.Image

from tests.helpers import encode

# A legal 1x2000 PNG of about 100 bytes: cropped to 512x512 without a limit, it is first resized to
# 512x1024000 pixels (1.5 GB).
TALL_PNG = encode(PIL.Image.new("RGB", (1, 2000)))


def latents(frames: int, latent_size: int) -> np.ndarray:
    """VAE decoder input: [frames, 4 channels, latent_size, latent_size]."""
    return np.zeros((frames, 4, latent_size, latent_size), np.float32)


def prompts(count: int, size: int, fill: bytes = b"a") -> np.ndarray:
    return np.array([fill * size] * count, dtype=np.object_)


INVALID_UTF8 = np.array([b"\xff\xfe"], dtype=np.object_)
