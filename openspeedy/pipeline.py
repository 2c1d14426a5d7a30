"""The I2VGen-XL algorithm: encoders, the denoising loop with classifier-free guidance, decoding.

It reproduces diffusers' ``I2VGenXLPipeline`` step for step, but talks to the five components only
through their contracts (``call_model(contract, inputs) -> outputs``). Inside Triton that call is a BLS
sub-request; in process it is a direct call (``openspeedy.local_models``). Either way this module is the
one place the loop lives, and importing it loads no network: the Triton entry model that runs the loop
holds none.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from openspeedy import contracts
from openspeedy.cache import EncodingCaches, Entry
from openspeedy.contracts import ModelContract
from openspeedy.imaging import center_crop_wide, to_uint8_batch
from openspeedy.request import GenerationRequest


class ModelCaller(Protocol):
    """Calls one model. A caller may also have ``call_many(contract, [inputs, ...])``: the calls at once,
    their outputs in order (the CFG-parallel halves); without it they are made one after the other."""

    def __call__(self, contract: ModelContract, inputs: Mapping[str, Any]) -> Mapping[str, torch.Tensor]: ...


# The UNet inputs with one row per CFG half; TIMESTEP and RETURN_DEEP_FEATURES are shared by both halves.
_PER_ROW_INPUTS = ("SAMPLE", "ENCODER_HIDDEN_STATES", "FPS", "IMAGE_LATENTS", "IMAGE_EMBEDDINGS")


def _feature_rows(features: torch.Tensor, first: int, rows: int, frames: int) -> torch.Tensor:
    """Rows ``first`` to ``first + rows`` of deep features laid out [rows * frames, ...], row-major."""
    return features[first * frames:(first + rows) * frames]


def sample_posterior(posterior: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw from the VAE's posterior [mean, log variance] on the channel axis: diffusers'
    ``DiagonalGaussianDistribution(posterior).sample(generator)``, the same operations in the same order,
    written here because importing that class loads all of ``diffusers.models`` into the entry model."""
    mean, logvar = torch.chunk(posterior, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    noise = randn_tensor(mean.shape, generator=generator, device=posterior.device, dtype=posterior.dtype)
    return mean + std * noise


def posterior_seed(seed: int) -> int:
    """Seed of the VAE posterior draw: derived from the request seed, distinct from the latent noise's."""
    return (seed + 0x9E3779B97F4A7C15) % 2**63


StepCallback = Callable[[int, int], None]  # (steps done, total); raising from it stops the generation
# (steps done, total, the scheduler's predicted clean latents [1, C, F, h, w], scaled); before the step callback
PredictionCallback = Callable[[int, int, torch.Tensor], None]


class I2VGenXL:
    """The orchestrator's algorithm. ``generate`` returns the video as a uint8 [F, H, W, 3] tensor."""

    def __init__(
        self,
        call_model: ModelCaller,
        scheduler_config: Mapping[str, Any],
        vae_scaling_factor: float,
        device: str | torch.device = "cpu",
        caches: EncodingCaches | None = None,
        cfg_parallel: bool = False,
    ):
        self.call_model = call_model
        # CFG-parallel: each guided UNet call as two concurrent one-row calls (uncond, cond), one per
        # UNet instance (a GPU each), recombined in the batched order so nothing downstream changes.
        self.cfg_parallel = cfg_parallel
        self.caches = caches
        self.scheduler_config = dict(scheduler_config)
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.device = torch.device(device)

    def _call(self, contract: ModelContract, output: str, **inputs: Any) -> torch.Tensor:
        return self.call_model(contract, inputs)[output].to(self.device)

    def _cached(self, cache: str, key: Callable[[], str], compute: Callable[[], Entry]) -> tuple[Entry, bool]:
        if self.caches is None:
            return compute(), False
        return self.caches.lookup(cache, key(), compute, self.device)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[1, tokens, width] embedding of one prompt. One prompt per call, like the reference: the result
        never depends on which other prompt shared the batch, so cache hits and misses agree bit for bit."""
        text = np.array([prompt.encode("utf-8")], dtype=object)
        return self._cached(
            "prompt",
            lambda: self.caches.prompt_key(prompt),
            lambda: {"embeds": self._call(contracts.TEXT_ENCODER, "PROMPT_EMBEDS", PROMPT=text)},
        )[0]["embeds"]

    def encode_image(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The image-only work: CLIP embedding of the square crop, VAE posterior parameters of the target crop,
        and whether they came from the cache."""

        def compute() -> Entry:
            square = center_crop_wide(request.image, (request.width, request.width))
            target = center_crop_wide(request.image, (request.width, request.height))
            return {
                "embeds": self._call(
                    contracts.IMAGE_ENCODER, "IMAGE_EMBEDS", IMAGE=torch.from_numpy(to_uint8_batch(square))
                ),
                "posterior": self._call(
                    contracts.VAE_ENCODER, "LATENT_PARAMETERS", IMAGE=torch.from_numpy(to_uint8_batch(target))
                ),
            }

        entry, hit = self._cached(
            "image", lambda: self.caches.image_key(request.image_bytes, request.width, request.height), compute
        )
        return entry["embeds"], entry["posterior"], hit

    def image_latents(self, posterior: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
        """Samples the posterior with the request's seed and appends the reference's frame position mask."""
        generator = torch.Generator("cpu").manual_seed(posterior_seed(request.seed))
        latents = sample_posterior(posterior, generator) * self.vae_scaling_factor
        latents = latents.unsqueeze(2)  # [1, C, 1, h, w]: the first frame
        masks = [torch.ones_like(latents) * ((i + 1) / (request.num_frames - 1)) for i in range(request.num_frames - 1)]
        return torch.cat([latents, *masks], dim=2)

    @torch.inference_mode()
    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None,
                 on_image_encoded: Callable[[bool], None] | None = None,
                 on_prediction: PredictionCallback | None = None) -> torch.Tensor:
        """The video of one request as uint8 [F, H, W, 3]."""
        return self.decode(self.denoise(request, on_step, on_image_encoded, on_prediction), request.decode_chunk_size)

    @torch.inference_mode()
    def denoise(self, request: GenerationRequest, on_step: StepCallback | None = None,
                on_image_encoded: Callable[[bool], None] | None = None,
                on_prediction: PredictionCallback | None = None) -> torch.Tensor:
        """The final latents [1, C, F, h, w] of one request (scaled like the reference's output_type="latent").
        ``on_image_encoded(from_cache)`` tells whether the image's encodings came from the cache;
        ``on_prediction`` gets each step's predicted clean latents (live previews)."""
        cfg = request.do_classifier_free_guidance
        prompts = [request.negative_prompt, request.prompt] if cfg else [request.prompt]
        prompt_embeds = torch.cat([self.encode_prompt(p) for p in prompts])

        image_embeds, posterior, from_cache = self.encode_image(request)
        if on_image_encoded is not None:
            on_image_encoded(from_cache)
        image_embeds = image_embeds.unsqueeze(1)
        image_latents = self.image_latents(posterior, request)
        if cfg:
            image_embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds])
            image_latents = torch.cat([image_latents] * 2)
        batch = 2 if cfg else 1
        fps = torch.full((batch,), request.target_fps, dtype=torch.int64, device=self.device)

        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        # The timesteps stay on the host for the scheduler: its step indexes host tables with the timestep
        # and compares it with 0, and a device timestep would make each step wait there for the GPU to
        # finish the UNet call. The UNet gets them from one copy on the device, made here.
        scheduler.set_timesteps(request.num_inference_steps)
        unet_timesteps = scheduler.timesteps.to(self.device, torch.int64)

        channels, latent_height, latent_width = posterior.shape[1] // 2, posterior.shape[2], posterior.shape[3]
        shape = (1, channels, request.num_frames, latent_height, latent_width)
        latents = randn_tensor(
            shape,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            device=self.device,
            dtype=torch.float32,
        )
        latents = latents * scheduler.init_noise_sigma

        total = len(scheduler.timesteps)
        deep = None  # (deep features, the CFG batch they were computed for), with feature reuse
        for step, t in enumerate(scheduler.timesteps):
            guided = request.guided(step, total)
            # Outside the guidance interval only the conditional half runs: the batch's second row.
            rows = slice(None) if guided or not cfg else slice(1, None)
            rows_in_call = 2 if guided else 1
            inputs = dict(
                SAMPLE=scheduler.scale_model_input(torch.cat([latents] * rows_in_call), t),
                TIMESTEP=unet_timesteps[step:step + 1],
                ENCODER_HIDDEN_STATES=prompt_embeds[rows],
                FPS=fps[rows],
                IMAGE_LATENTS=image_latents[rows],
                IMAGE_EMBEDDINGS=image_embeds[rows],
            )
            reused = None
            if request.feature_reuse_interval > 1:
                reused = self._reusable(deep, step, request, rows_in_call)
                if reused is None:
                    inputs["RETURN_DEEP_FEATURES"] = torch.ones(1, dtype=torch.int32)
                else:
                    inputs["DEEP_FEATURES"] = reused
            if self.cfg_parallel and rows_in_call == 2:
                outputs = self._call_unet_halves(inputs, request.num_frames)
            else:
                outputs = self.call_model(contracts.UNET, inputs)
            if reused is None and "DEEP_FEATURES" in outputs:
                deep = (outputs["DEEP_FEATURES"], rows_in_call)
            noise_pred = outputs["NOISE_PRED"].to(self.device)
            if guided:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + request.guidance_scale * (text - uncond)
            latents, predicted = self._scheduler_step(scheduler, noise_pred, t, latents)
            if on_prediction is not None:
                on_prediction(step + 1, total, predicted)
            if on_step is not None:
                on_step(step + 1, total)
        return latents

    def _call_unet_halves(self, inputs: Mapping[str, Any], frames: int) -> dict[str, torch.Tensor]:
        """One CFG-batch UNet call made as two concurrent one-row calls; the outputs as the batched call's."""
        halves = []
        for row in range(2):
            half = dict(inputs)
            for name in _PER_ROW_INPUTS:
                half[name] = inputs[name][row:row + 1]
            if "DEEP_FEATURES" in inputs:
                half["DEEP_FEATURES"] = _feature_rows(inputs["DEEP_FEATURES"], row, 1, frames)
            halves.append(half)
        call_many = getattr(self.call_model, "call_many", None)
        if call_many is None:
            results = [self.call_model(contracts.UNET, half) for half in halves]
        else:
            results = call_many(contracts.UNET, halves)
        # Each half may come back on its own GPU: bring both here before joining them.
        outputs = {"NOISE_PRED": torch.cat([r["NOISE_PRED"].to(self.device) for r in results])}
        if all("DEEP_FEATURES" in r for r in results):
            outputs["DEEP_FEATURES"] = torch.cat([r["DEEP_FEATURES"].to(self.device) for r in results])
        return outputs

    @staticmethod
    def _reusable(deep, step: int, request: GenerationRequest, rows_in_call: int) -> torch.Tensor | None:
        """The deep features this step reuses, or None for a full step: every ``feature_reuse_interval``-th
        step is full, and so is a step that needs rows the kept features lack (CFG after a conditional-only
        step)."""
        if deep is None or step % request.feature_reuse_interval == 0:
            return None
        features, rows = deep
        if rows < rows_in_call:
            return None
        # Fewer rows than kept: the conditional one, the last.
        return _feature_rows(features, rows - rows_in_call, rows_in_call, request.num_frames)

    @staticmethod
    def _scheduler_step(scheduler: DDIMScheduler, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next latents and the step's predicted clean latents, both in the latents' layout (views)."""
        # The scheduler works on images: fold frames into the batch, as the reference does.
        b, c, f, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        flat_noise = noise_pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        output = scheduler.step(flat_noise, t, flat)

        def unfold(folded: torch.Tensor) -> torch.Tensor:
            return folded[None].reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

        return unfold(output.prev_sample), unfold(output.pred_original_sample)

    def decode(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """uint8 [F, H, W, 3] frames, left where the decoder put them (host memory: they leave the server)."""
        frames = ((1 / self.vae_scaling_factor) * latents)[0].permute(1, 0, 2, 3).contiguous()  # [F, C, h, w]
        decoding = {"LATENTS": frames, "DECODE_CHUNK_SIZE": torch.tensor([decode_chunk_size], dtype=torch.int32)}
        return self.call_model(contracts.VAE_DECODER, decoding)["FRAMES"]
