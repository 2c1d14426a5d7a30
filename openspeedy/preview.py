"""Live previews: the video predicted so far, as a small PNG, without running the VAE decoder.

The scheduler's predicted clean latents are mapped to RGB by a linear approximation of the VAE
decoder at latent resolution (one pixel per latent pixel), a few frames side by side.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import PIL.Image
import torch

if TYPE_CHECKING:
    from openspeedy.request import GenerationRequest

# Latent-to-RGB approximation of the Stable Diffusion VAE (the kl-f8 autoencoder with 4 latent channels,
# which I2VGen-XL's VAE is), from ComfyUI's latent preview (comfy/latent_formats.py, class SD15): one row
# per latent channel, columns R, G, B, applied to scaled latents (the UNet's space); it has no bias.
# The result is in [-1, 1] like the decoder's output.
LATENT_RGB_FACTORS = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])

# Frames a preview shows, evenly spaced from the first to the last: a glance, not the video.
PREVIEW_FRAMES = 4


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """uint8 [F, h, w, 3] from scaled latents [1, C, F, h, w] (C = 4), on the latents' device."""
    channels = latents.shape[1]
    if channels != LATENT_RGB_FACTORS.shape[0]:
        raise ValueError(f"the latent-to-RGB approximation needs {LATENT_RGB_FACTORS.shape[0]} latent "
                         f"channels, got {channels}")
    frames = latents[0].permute(1, 2, 3, 0).float()  # [F, h, w, C]
    factors = LATENT_RGB_FACTORS.to(frames.device)
    rgb = frames @ factors
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def preview_png(latents: torch.Tensor, frames: int = PREVIEW_FRAMES) -> bytes:
    """A PNG strip of up to ``frames`` evenly spaced frames of scaled latents [1, C, F, h, w], left to right."""
    total = latents.shape[2]
    picked = torch.linspace(0, total - 1, min(frames, total)).round().long().tolist()
    rgb = latents_to_rgb(latents[:, :, picked])  # only the picked frames cross to the host
    strip = torch.cat(list(rgb), dim=1).cpu().numpy()  # [h, len(picked) * w, 3]
    buffer = io.BytesIO()
    PIL.Image.fromarray(strip).save(buffer, format="PNG")
    return buffer.getvalue()


class Previews:
    """The pipeline's ``on_prediction`` hook for one request: a preview at each of its PREVIEW_INTERVAL
    steps, held until the step's progress response takes it (``take``)."""

    def __init__(self, request: "GenerationRequest"):
        self.request = request
        self._made: dict[int, bytes] = {}

    def __call__(self, done: int, total: int, predicted: torch.Tensor) -> None:
        if self.request.previews_at(done):
            self._made[done] = preview_png(predicted)

    def take(self, step: int) -> bytes | None:
        return self._made.pop(step, None)
