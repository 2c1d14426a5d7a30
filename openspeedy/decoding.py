"""Chunked VAE decoding under a memory budget: the one place that decides how frames are decoded.

Decoding all frames in one call needs memory in proportion to frames x pixels (24 frames at 768x768
take 23.6 GB with the full-size VAE). Here frames go through the VAE in chunks, one after another on
one stream; each chunk becomes uint8 on the device, and its copy to pinned host memory runs on a side
stream while the next chunk decodes. The automatic plan cuts the frames into equal chunks, as few as
keep each chunk's peak within both the configured budget and the free device memory, from a per-frame
cost measured once per resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

from openspeedy.compilation import compiler

# What a decode needs beyond its inputs, in bytes, when the VAE runs on the CPU (where nothing can
# measure it): the widest activation (the first block's channels at full resolution) a few times over.
_CPU_ACTIVATION_COPIES = 6


DEFAULT_MEMORY_BUDGET_BYTES = 8 << 30  # what a decode may take beyond the VAE's weights
DEFAULT_TILE_ABOVE_PIXELS = 1280 * 1280  # frames larger than this decode in spatial tiles


# Plans leave this share of the budget unused: the measured cost model is an estimate.
_HEADROOM = 0.95


class DecodeOutOfMemory(RuntimeError):
    pass


@dataclass(frozen=True)
class DecodeCost:
    """Peak device bytes of a decode of n frames at one resolution: fixed + per_frame * n."""

    fixed: int
    per_frame: int

    def frames_within(self, budget: int) -> int:
        return max(0, (budget - self.fixed) // max(1, self.per_frame))


def equal_chunk(frames: int, largest: int) -> int:
    """The chunk that decodes ``frames`` in as few calls of at most ``largest`` frames as the plain cut
    needs, with the frames spread over them (16 at most 15 at a time: 8 and 8, not 15 and 1): no slow
    single-frame call at the end, and fewer chunk shapes to compile."""
    calls = -(-frames // largest)
    return -(-frames // calls)


def frames_to_uint8(decoded: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] to [N, H, W, 3] uint8 on the same device, rounding like diffusers' numpy_to_pil."""
    return ((decoded.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class ChunkedDecoder:
    def __init__(
        self,
        vae: AutoencoderKL,
        device: torch.device,
        dtype: torch.dtype,
        memory_budget_bytes: int,
        tile_above_pixels: int,
        compile_mode: str = "",
    ):
        self.vae, self.device, self.dtype = vae, device, dtype
        self.memory_budget_bytes = memory_budget_bytes
        self.tile_above_pixels = tile_above_pixels
        self._costs: dict[tuple[int, int, int, bool], DecodeCost] = {}
        # torch.compile of the decoder network halves its time on an H200 (16 frames at 512x512: 103
        # against 211 ms, docs/speed.md): most of it is group norms and activations at full resolution,
        # which Inductor fuses. Static shapes: dynamic ones would lose Inductor's channels-last layout.
        # Each chunk shape compiles once. The memory plan measures this decoder, not the eager one: its
        # peak is lower (5.4 against 8.6 GB for that decode), so its chunks are larger (16 frames in one
        # call under the default budget, 103 ms, where eager's plan cuts 8 + 8, 128 ms compiled).
        self._compiled_decoder = compiler(compile_mode, {})(vae.decoder) if compile_mode else None

    @property
    def spatial_scale(self) -> int:
        """Pixels per latent pixel along each side (8 for I2VGen-XL's VAE): one downsampling per block but the last."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- how much memory a decode takes -------------------------------------------------------------

    def _measure_peak(self, latents: torch.Tensor) -> int:
        if self._compiled_decoder is not None:
            self.decode_chunk(latents)  # a shape's first call compiles and tunes: not what a decode takes
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        frames_to_uint8(self.decode_chunk(latents))
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before

    def cost(self, latent_shape: tuple[int, ...]) -> DecodeCost:
        """The decode cost at this latent size: measured on CUDA, estimated on the CPU; cached per size.

        Measured from 2- and 4-frame decodes: on an H200 with the full-size VAE the peak grows faster than
        the 1-to-2-frame step suggests (allocator rounding, convolution workspaces), and a 2-to-4 slope
        predicted the 8- to 32-frame peaks within 1%, where a 1-to-2 slope fell 15-25% short. The probes
        go through ``decode_chunk``, what decodes: with the compiled decoder that is two more shapes to
        compile, once per resolution."""
        _, channels, height, width = latent_shape
        key = (channels, height, width, self._tiling(height, width))
        if key not in self._costs:
            if self.device.type == "cuda":
                probe = torch.randn(4, channels, height, width, device=self.device, dtype=self.dtype)
                with torch.inference_mode():
                    two, four = self._measure_peak(probe[:2]), self._measure_peak(probe)
                per_frame = max(1, (four - two) // 2)
                self._costs[key] = DecodeCost(fixed=max(0, two - 2 * per_frame), per_frame=per_frame)
            else:
                scale = self.spatial_scale
                widest = self.vae.config.block_out_channels[0] * height * width * scale * scale
                itemsize = torch.finfo(self.dtype).bits // 8
                self._costs[key] = DecodeCost(fixed=0, per_frame=widest * itemsize * _CPU_ACTIVATION_COPIES)
        return self._costs[key]

    def available_bytes(self) -> int:
        """The budget less a safety margin, lowered to what the device has free (CUDA) right now."""
        budget = int(self.memory_budget_bytes * _HEADROOM)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return min(budget, int(free * _HEADROOM))
        return budget

    def automatic_chunk(self, latent_shape: tuple[int, ...]) -> int:
        return max(1, min(latent_shape[0], self.cost(latent_shape).frames_within(self.available_bytes())))

    def _tiling(self, latent_height: int, latent_width: int) -> bool:
        return latent_height * latent_width * self.spatial_scale**2 > self.tile_above_pixels

    # -- decoding -----------------------------------------------------------------------------------

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """What ``vae.decode(latents).sample`` computes, through the compiled decoder where there is one
        (tiled frames stay on diffusers' own tiling, which calls the eager decoder per tile)."""
        if self._compiled_decoder is None or self.vae.use_tiling:
            return self.vae.decode(latents).sample
        return self._compiled_decoder(self.vae.post_quant_conv(latents))

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        """[F, C, h, w] unscaled latents to [F, H, W, 3] uint8 frames in (pinned, on CUDA) host memory.

        ``chunk_size`` 0 picks equal chunks, each as large as fits; if that still runs out of memory, the
        chunk is halved and the decode retried. An explicit chunk size is honoured as it is.
        """
        latents = latents.to(self.device, self.dtype)
        # Above the configured size even one frame may not fit: diffusers' spatial tiling then decodes
        # each frame in overlapping tiles (the set-up is per call: one instance serves one request at a time).
        self.vae.use_tiling = self._tiling(latents.shape[2], latents.shape[3])
        automatic = chunk_size == 0
        chunk = self.automatic_chunk(tuple(latents.shape)) if automatic else chunk_size
        while True:
            try:
                return self._decode_in_chunks(latents, equal_chunk(latents.shape[0], chunk) if automatic else chunk)
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if not automatic or chunk == 1:
                    raise DecodeOutOfMemory(
                        f"vae_decoder ran out of device memory decoding {latents.shape[0]} frames of "
                        f"{tuple(latents.shape[2:])} latents {chunk} at a time; use a smaller DECODE_CHUNK_SIZE "
                        f"or fewer frames"
                    ) from None
                chunk = max(1, chunk // 2)

    def _decode_in_chunks(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        frames = latents.shape[0]
        if self.device.type != "cuda":
            chunks = (latents[i : i + chunk] for i in range(0, frames, chunk))
            return torch.cat([frames_to_uint8(self.decode_chunk(part)) for part in chunks])
        compute = torch.cuda.current_stream(self.device)
        copy = torch.cuda.Stream(self.device)
        output = None
        for start in range(0, frames, chunk):
            decoded = frames_to_uint8(self.decode_chunk(latents[start : start + chunk])).contiguous()
            if output is None:
                output = torch.empty((frames, *decoded.shape[1:]), dtype=torch.uint8, pin_memory=True)
            copy.wait_stream(compute)  # the copy starts once this chunk is uint8 ...
            with torch.cuda.stream(copy):
                output[start : start + decoded.shape[0]].copy_(decoded, non_blocking=True)
            decoded.record_stream(copy)  # ... and its memory is not reused before the copy is done
        copy.synchronize()
        return output
