"""What a component model accepts, derived from the entry models' request limits at export.

The orchestrator never sends a component more than a valid public request needs; a component holds every
call to the same bounds, so a call that reached it some other way cannot make it do more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from openspeedy import contracts
from openspeedy.contracts import ModelContract
from openspeedy.errors import InvalidInput
from openspeedy.request import RequestSettings

# Pixels per latent pixel along each side: the VAE of I2VGen-XL and of the tiny model alike.
LATENT_SCALE = 8
_PREFIX = "limit_"


@dataclass(frozen=True)
class ComponentLimits:
    max_batch: int = 2  # a classifier-free-guidance batch: the unconditional and the conditional row
    max_size: int = RequestSettings.max_size  # pixels per side of an image input (latents: / LATENT_SCALE)
    max_frames: int = RequestSettings.max_num_frames
    max_frames_x_pixels: int = RequestSettings.max_frames_x_pixels  # frames x pixels of a video (latents: / 64)
    max_prompt_bytes: int = RequestSettings.max_prompt_bytes
    max_decode_chunk_size: int = RequestSettings.max_decode_chunk_size

    @classmethod
    def from_settings(cls, settings: RequestSettings) -> "ComponentLimits":
        return cls(max_size=settings.max_size, max_frames=settings.max_num_frames,
                   max_frames_x_pixels=settings.max_frames_x_pixels, max_prompt_bytes=settings.max_prompt_bytes,
                   max_decode_chunk_size=settings.max_decode_chunk_size)

    def as_parameters(self) -> dict[str, str]:
        return {_PREFIX + name: str(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "ComponentLimits":
        """The limits in a component's config parameters; those absent keep the published model's."""
        return cls(**{field.name: int(parameters[_PREFIX + field.name]) for field in dataclasses.fields(cls)
                      if _PREFIX + field.name in parameters})

    def axis_limits(self, contract: ModelContract) -> dict[str, int]:
        """The largest size of each named axis of ``contract``'s inputs."""
        latent = self.max_size // LATENT_SCALE
        # The UNet's height and width are the latent's; the encoders' are the image's.
        spatial = latent if contracts.component_of(contract.name) == contracts.UNET.name else self.max_size
        return {
            "batch": self.max_batch, "frames": self.max_frames, "batch_frames": self.max_batch * self.max_frames,
            "height": spatial, "width": spatial, "latent_height": latent, "latent_width": latent,
            "tokens": contracts.PROMPT_TOKENS, "image_tokens": 1,
        }

    def check(self, contract: ModelContract, inputs: Mapping[str, Any]) -> None:
        """Raises InvalidInput naming the first input of a call that is larger than these limits allow."""
        limits = self.axis_limits(contract)
        for name, value in inputs.items():
            spec = contract.input(name)
            sizes = dict(zip(spec.axes, value.shape))
            for axis, size in sizes.items():
                if size < 1:  # an empty tensor: nothing to compute, and divisions by its size in the models
                    raise InvalidInput(name, f"has no elements on axis '{axis}'")
                if isinstance(axis, str) and axis in limits and size > limits[axis]:
                    raise InvalidInput(name, f"has {size} on axis '{axis}'; the limit is {limits[axis]}")
            self._check_video(name, sizes)
            if spec.datatype == "BYTES":
                self._check_texts(name, value)
        if "DECODE_CHUNK_SIZE" in inputs:
            chunk = int(inputs["DECODE_CHUNK_SIZE"][0])
            if not 0 <= chunk <= self.max_decode_chunk_size:
                raise InvalidInput("DECODE_CHUNK_SIZE", f"must be between 0 and {self.max_decode_chunk_size}, "
                                                        f"got {chunk}")

    def _check_video(self, name: str, sizes: Mapping[Any, int]) -> None:
        frames = sizes.get("frames", 0)
        pixels = sizes.get("latent_height", sizes.get("height", 0)) * sizes.get("latent_width", sizes.get("width", 0))
        latent = "latent_height" in sizes or "channels" in sizes  # latents: the UNet's video and the decoder's input
        limit = self.max_frames_x_pixels // (LATENT_SCALE * LATENT_SCALE) if latent else self.max_frames_x_pixels
        if frames * pixels > limit:
            raise InvalidInput(name, f"has {frames} frames of {pixels} pixels; the limit is {limit} frame pixels")

    def _check_texts(self, name: str, value: Any) -> None:
        for text in value.reshape(-1):
            raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            if len(raw) > self.max_prompt_bytes:
                raise InvalidInput(name, f"has an element of {len(raw)} bytes; the limit is "
                                         f"{self.max_prompt_bytes} bytes")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidInput(name, f"must be valid UTF-8 ({error})") from None
