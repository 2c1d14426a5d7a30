"""Tensor contracts of every Triton model, declared once.

Config files (``config.pbtxt``), the orchestrator's sub-requests, the in-process model caller and the
tests all read these declarations, so a name, dtype or shape lives in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Triton datatype name -> numpy dtype. BYTES travel as numpy object arrays of ``bytes``.
_NUMPY_DTYPES = {
    "BYTES": np.object_,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton datatype name without the TYPE_ prefix: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # -1 marks a variable dimension
    optional: bool = False
    description: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_DTYPES[self.datatype])

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.dims) and all(d == -1 or d == s for d, s in zip(self.dims, shape))


@dataclass(frozen=True)
class ModelContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False
    # Where a caller on a GPU wants this model's outputs: on its own device (the default), or in host
    # memory when they are headed for the client anyway (the decoded frames).
    outputs_to_host: bool = False

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)


def _by_name(specs: tuple[TensorSpec, ...], name: str, model: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"model {model!r} declares no tensor {name!r}")


# Float tensors between models are FP32 whatever precision a model computes in: the scheduler step and
# CFG run in FP32 like the reference, and every runtime (PyTorch, onnxruntime, TensorRT) keeps one
# interface. The bytes are negligible next to the UNet's work.

TEXT_ENCODER = ModelContract(
    name="text_encoder",
    inputs=(TensorSpec("PROMPT", "BYTES", (-1,), description="UTF-8 prompts, one per batch row"),),
    outputs=(
        TensorSpec(
            "PROMPT_EMBEDS", "FP32", (-1, -1, -1), description="[B, tokens, width] penultimate layer + final norm"
        ),
    ),
)

IMAGE_ENCODER = ModelContract(
    name="image_encoder",
    inputs=(TensorSpec("IMAGE", "UINT8", (-1, -1, -1, 3), description="[B, S, S, 3] square RGB crops"),),
    outputs=(TensorSpec("IMAGE_EMBEDS", "FP32", (-1, -1), description="[B, projection] CLIP image embeddings"),),
)

VAE_ENCODER = ModelContract(
    name="vae_encoder",
    inputs=(TensorSpec("IMAGE", "UINT8", (-1, -1, -1, 3), description="[B, H, W, 3] RGB at the target size"),),
    outputs=(
        TensorSpec(
            "LATENT_PARAMETERS",
            "FP32",
            (-1, -1, -1, -1),
            description="[B, 2*C, H/8, W/8] mean and log-variance of the latent posterior (unscaled)",
        ),
    ),
)

UNET = ModelContract(
    name="unet",
    inputs=(
        TensorSpec("SAMPLE", "FP32", (-1, -1, -1, -1, -1), description="[B, C, F, h, w] noisy latents"),
        TensorSpec("TIMESTEP", "INT64", (1,), description="diffusion timestep shared by the batch"),
        TensorSpec("ENCODER_HIDDEN_STATES", "FP32", (-1, -1, -1), description="[B, tokens, width] prompt embeds"),
        TensorSpec("FPS", "INT64", (-1,), description="[B] fps conditioning"),
        TensorSpec("IMAGE_LATENTS", "FP32", (-1, -1, -1, -1, -1), description="[B, C, F, h, w] image latents"),
        TensorSpec("IMAGE_EMBEDDINGS", "FP32", (-1, -1, -1), description="[B, 1, width] image embeddings"),
    ),
    outputs=(TensorSpec("NOISE_PRED", "FP32", (-1, -1, -1, -1, -1), description="[B, C, F, h, w] model output"),),
)

VAE_DECODER = ModelContract(
    name="vae_decoder",
    inputs=(
        TensorSpec("LATENTS", "FP32", (-1, -1, -1, -1), description="[F, C, h, w] unscaled latents"),
        TensorSpec("DECODE_CHUNK_SIZE", "INT32", (1,), description="frames per VAE call, 0 = automatic"),
    ),
    outputs=(TensorSpec("FRAMES", "UINT8", (-1, -1, -1, 3), description="[F, H, W, 3] RGB frames"),),
    outputs_to_host=True,
)

_ENTRY_INPUTS = (
    TensorSpec("IMAGE", "BYTES", (1,), description="encoded image file: PNG, JPEG, WebP or BMP"),
    TensorSpec("PROMPT", "BYTES", (1,), description="UTF-8 text, may be empty"),
    TensorSpec("NEGATIVE_PROMPT", "BYTES", (1,), optional=True, description="UTF-8 text, default empty"),
    TensorSpec("NUM_FRAMES", "INT32", (1,), optional=True, description="frames in the video"),
    TensorSpec("HEIGHT", "INT32", (1,), optional=True, description="output height, multiple of 8"),
    TensorSpec("WIDTH", "INT32", (1,), optional=True, description="output width, multiple of 8"),
    TensorSpec("NUM_INFERENCE_STEPS", "INT32", (1,), optional=True, description="denoising steps"),
    TensorSpec("GUIDANCE_SCALE", "FP32", (1,), optional=True, description="CFG weight; <= 1 turns CFG off"),
    TensorSpec("TARGET_FPS", "INT32", (1,), optional=True, description="fps conditioning of the model"),
    TensorSpec("SEED", "INT64", (1,), optional=True, description="same seed and inputs, same video"),
    TensorSpec("DECODE_CHUNK_SIZE", "INT32", (1,), optional=True, description="frames per VAE decode, 0 = auto"),
)
_VIDEO = TensorSpec("VIDEO", "UINT8", (-1, -1, -1, 3), description="[F, H, W, 3] RGB frames")
_VIDEO_MP4 = TensorSpec("VIDEO_MP4", "BYTES", (1,), description="H.264 MP4, computed only when requested")

_CACHE_HIT = TensorSpec(
    "CACHE_HIT", "BOOL", (1,),
    description="true when the image's encodings (CLIP embedding, VAE posterior) came from the encoding cache",
)
_PROGRESS = TensorSpec("PROGRESS", "INT32", (2,), description="(steps done, total steps), one response per step")

I2VGEN_XL = ModelContract(name="i2vgen_xl", inputs=_ENTRY_INPUTS, outputs=(_VIDEO, _VIDEO_MP4, _CACHE_HIT))
# The stream model sends CACHE_HIT with the video, in its final response.
I2VGEN_XL_STREAM = ModelContract(
    name="i2vgen_xl_stream", inputs=_ENTRY_INPUTS, outputs=(_VIDEO, _VIDEO_MP4, _CACHE_HIT, _PROGRESS),
    decoupled=True,
)

COMPONENTS = (TEXT_ENCODER, IMAGE_ENCODER, VAE_ENCODER, UNET, VAE_DECODER)
ENTRY_MODELS = (I2VGEN_XL, I2VGEN_XL_STREAM)
ALL_MODELS = ENTRY_MODELS + COMPONENTS
BY_NAME = {contract.name: contract for contract in ALL_MODELS}


# Per-GPU placement (export's --per-gpu-components): one copy of each component model per GPU, named
# "<component>_gpu<N>" and pinned to GPU N, so an orchestrator on GPU N keeps its sub-requests, and
# the tensors they carry, on its own GPU. Triton itself picks any instance of a model, on any GPU.
_GPU_COPY = re.compile(r"^(?P<component>.+)_gpu(?P<gpu>\d+)$")


def gpu_model_name(component: str, gpu: int) -> str:
    return f"{component}_gpu{gpu}"


def component_of(model_name: str) -> str:
    """The component a model serves: "unet" for both "unet" and its per-GPU copy "unet_gpu1"."""
    match = _GPU_COPY.match(model_name)
    return match["component"] if match else model_name
