"""Tensor contracts of every Triton model, declared once.

Config files (``config.pbtxt``), the orchestrator's sub-requests, the in-process model caller and the
tests all read these declarations, so a name, dtype or shape lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
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


# Axes whose size the model fixes (its weights and architecture), so every request to one model has the
# same: -1 in the config, which serves the tiny and the full-size model alike, but static in an exported
# graph and outside TensorRT profiles. Every other named axis varies between requests.
FIXED_BY_MODEL = frozenset({"channels", "features", "image_tokens"})

# CLIP's tokenizer pads every prompt to this many tokens (the published and the tiny checkpoint alike).
PROMPT_TOKENS = 77


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton datatype name without the TYPE_ prefix: FP32, INT64, BYTES, ...
    # One entry per dimension: an int where the contract fixes the size, else the axis's name
    # ("batch", "frames", ...; see FIXED_BY_MODEL). Config dims, exported graph axes, TensorRT profiles
    # and example inputs all follow from it.
    axes: tuple[int | str, ...]
    optional: bool = False
    description: str = ""

    @property
    def dims(self) -> tuple[int, ...]:
        """Triton's dims: -1 for every named axis."""
        return tuple(-1 if isinstance(axis, str) else axis for axis in self.axes)

    @property
    def varying_axes(self) -> dict[int, str]:
        """{position: axis name} of the axes that vary between requests (dynamic in an exported graph)."""
        return {i: axis for i, axis in enumerate(self.axes) if isinstance(axis, str) and axis not in FIXED_BY_MODEL}

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

    def required(self) -> "ModelContract":
        """The contract without its optional tensors: what runtimes fixed at export (ONNX, TensorRT) serve."""
        return dataclasses.replace(self, inputs=tuple(s for s in self.inputs if not s.optional),
                                   outputs=tuple(s for s in self.outputs if not s.optional))

    def outputs_for(self, inputs) -> tuple[str, ...]:
        """The outputs a call with these inputs asks for: every required one, and an optional output NAME
        only when the call carries the input RETURN_NAME (a model config without it, e.g. an exported
        runtime's, would refuse a request that names it)."""
        return tuple(spec.name for spec in self.outputs if not spec.optional or f"RETURN_{spec.name}" in inputs)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @property
    def varying_axes(self) -> tuple[str, ...]:
        """Names of the axes that vary between requests, in order of first appearance."""
        names = (axis for spec in (*self.inputs, *self.outputs) for axis in spec.varying_axes.values())
        return tuple(dict.fromkeys(names))


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
    inputs=(TensorSpec("PROMPT", "BYTES", ("batch",), description="UTF-8 prompts, one per batch row"),),
    outputs=(
        TensorSpec("PROMPT_EMBEDS", "FP32", ("batch", "tokens", "features"),
                   description="[B, tokens, width] penultimate layer + final norm"),
    ),
)

IMAGE_ENCODER = ModelContract(
    name="image_encoder",
    inputs=(TensorSpec("IMAGE", "UINT8", ("batch", "height", "width", 3),
                       description="[B, S, S, 3] square RGB crops"),),
    outputs=(TensorSpec("IMAGE_EMBEDS", "FP32", ("batch", "features"),
                        description="[B, projection] CLIP image embeddings"),),
)

VAE_ENCODER = ModelContract(
    name="vae_encoder",
    inputs=(TensorSpec("IMAGE", "UINT8", ("batch", "height", "width", 3),
                       description="[B, H, W, 3] RGB at the target size"),),
    outputs=(
        TensorSpec(
            "LATENT_PARAMETERS",
            "FP32",
            ("batch", "channels", "latent_height", "latent_width"),
            description="[B, 2*C, H/8, W/8] mean and log-variance of the latent posterior (unscaled)",
        ),
    ),
)

# The UNet works in latent space: its height and width are the VAE latent's.
_LATENT_VIDEO = ("batch", "channels", "frames", "height", "width")
# Feature reuse's deep features: the last up block's input, frames folded into the batch (row-major).
_DEEP_FEATURES = ("batch_frames", "deep_channels", "height", "width")

UNET = ModelContract(
    name="unet",
    inputs=(
        TensorSpec("SAMPLE", "FP32", _LATENT_VIDEO, description="[B, C, F, h, w] noisy latents"),
        TensorSpec("TIMESTEP", "INT64", (1,), description="diffusion timestep shared by the batch"),
        TensorSpec("ENCODER_HIDDEN_STATES", "FP32", ("batch", "tokens", "features"),
                   description="[B, tokens, width] prompt embeds"),
        TensorSpec("FPS", "INT64", ("batch",), description="[B] fps conditioning"),
        TensorSpec("IMAGE_LATENTS", "FP32", _LATENT_VIDEO, description="[B, C, F, h, w] image latents"),
        TensorSpec("IMAGE_EMBEDDINGS", "FP32", ("batch", "image_tokens", "features"),
                   description="[B, 1, width] image embeddings"),
        # Step-level feature reuse, PyTorch runtime only (runtimes fixed at export serve UNET.required()):
        # a full step that keeps its deep features, or a shallow step that takes them from one.
        TensorSpec("DEEP_FEATURES", "FP32", _DEEP_FEATURES, optional=True,
                   description="[B*F, C', h, w] deep features of an earlier full step: run the shallow path"),
        TensorSpec("RETURN_DEEP_FEATURES", "INT32", (1,), optional=True,
                   description="1: a full step that also returns DEEP_FEATURES"),
    ),
    outputs=(
        TensorSpec("NOISE_PRED", "FP32", _LATENT_VIDEO, description="[B, C, F, h, w] model output"),
        TensorSpec("DEEP_FEATURES", "FP32", _DEEP_FEATURES, optional=True,
                   description="[B*F, C', h, w] input of the last up block, when RETURN_DEEP_FEATURES is 1"),
    ),
)

# The UNet served by runtimes fixed at export (ONNX graph, TensorRT engine): its required tensors only.
UNET_EXPORTED = UNET.required()
# The UNet inputs whose two rows in a classifier-free-guidance call are equal (the pipeline repeats
# them; only the prompt and image embeddings differ between the unconditional and conditional row).
UNET_CFG_SHARED_INPUTS = ("SAMPLE", "FPS", "IMAGE_LATENTS")

VAE_DECODER = ModelContract(
    name="vae_decoder",
    inputs=(
        TensorSpec("LATENTS", "FP32", ("frames", "channels", "latent_height", "latent_width"),
                   description="[F, C, h, w] unscaled latents"),
        TensorSpec("DECODE_CHUNK_SIZE", "INT32", (1,), description="frames per VAE call, 0 = automatic"),
    ),
    outputs=(TensorSpec("FRAMES", "UINT8", ("frames", "height", "width", 3), description="[F, H, W, 3] RGB frames"),),
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
    # Opt-in approximations, off by default (then the video is the exact one).
    TensorSpec("GUIDANCE_INTERVAL", "FP32", (2,), optional=True,
               description="(start, end) fractions of the steps that use CFG; default (0, 1): every step"),
    TensorSpec("FEATURE_REUSE_INTERVAL", "INT32", (1,), optional=True,
               description="deep UNet features recomputed every N steps, reused between; default 1: off"),
)
_VIDEO = TensorSpec("VIDEO", "UINT8", ("frames", "height", "width", 3), description="[F, H, W, 3] RGB frames")
_VIDEO_MP4 = TensorSpec("VIDEO_MP4", "BYTES", (1,), description="H.264 MP4, computed only when requested")

_CACHE_HIT = TensorSpec(
    "CACHE_HIT", "BOOL", (1,),
    description="true when the image's encodings (CLIP embedding, VAE posterior) came from the encoding cache",
)
_PROGRESS = TensorSpec("PROGRESS", "INT32", (2,), description="(steps done, total steps), one response per step")
NO_ESTIMATE_MS = -1
_QUEUE = TensorSpec(
    "QUEUE", "INT32", (2,),
    description="(requests ahead, the running one included; expected milliseconds until it starts, "
                f"{NO_ESTIMATE_MS} before any pace is known), while the request waits: when it arrives, when "
                "its place changes and every few seconds",
)

# Live previews, stream model only: the plain model answers once, at the end, so it has nowhere to send
# one and does not declare the input (Triton refuses a request that names it).
PREVIEW_INTERVAL_RULE = "0 (off) up to NUM_INFERENCE_STEPS"
_PREVIEW_INTERVAL = TensorSpec(
    "PREVIEW_INTERVAL", "INT32", (1,), optional=True,
    description=f"a PREVIEW every N denoising steps, {PREVIEW_INTERVAL_RULE}; default 0: none",
)
_PREVIEW = TensorSpec(
    "PREVIEW", "BYTES", (1,),
    description="PNG: a strip of a few frames of the video predicted so far, at latent resolution; in the "
                "PROGRESS responses of every PREVIEW_INTERVAL-th step",
)

I2VGEN_XL = ModelContract(name="i2vgen_xl", inputs=_ENTRY_INPUTS, outputs=(_VIDEO, _VIDEO_MP4, _CACHE_HIT))
# The stream model sends CACHE_HIT with the video, in its final response.
I2VGEN_XL_STREAM = ModelContract(
    name="i2vgen_xl_stream", inputs=(*_ENTRY_INPUTS, _PREVIEW_INTERVAL),
    outputs=(_VIDEO, _VIDEO_MP4, _CACHE_HIT, _QUEUE, _PROGRESS, _PREVIEW),
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
