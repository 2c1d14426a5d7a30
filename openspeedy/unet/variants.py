"""The ways the `unet` model can run, declared once: export, the server's loader and the benchmarks use these.

``RUNTIMES`` is what serves the model (chosen at export with ``--unet-runtime``): the diffusers weights
on PyTorch, the exported ONNX graph on onnxruntime, or a TensorRT engine. ``TORCH_VARIANTS`` are the
PyTorch runtime's option sets (the `unet` config parameters that ``components.UNet`` reads), by name.
"""

from __future__ import annotations

RUNTIMES = ("torch", "onnxruntime", "tensorrt")

TORCH_VARIANTS: dict[str, dict[str, str]] = {
    "eager": {},
    "fused": {"fuse_qkv": "true"},
    "compile": {"fuse_qkv": "true", "compile_mode": "default"},
    # Temporal convolutions as 2D ones, channels-last weights: see openspeedy/unet/layout.py.
    "eager-layout": {"fuse_qkv": "true", "temporal_conv2d": "true", "channels_last": "true"},
    "compile-layout": {"fuse_qkv": "true", "temporal_conv2d": "true", "compile_mode": "default"},
    "autotune": {"fuse_qkv": "true", "compile_mode": "max-autotune-no-cudagraphs"},
    "cudagraphs": {"fuse_qkv": "true", "compile_mode": "reduce-overhead"},
    "fp8": {"fuse_qkv": "true", "fp8": "true", "compile_mode": "default"},
    "fp8-eager": {"fuse_qkv": "true", "fp8": "true"},
}

# What export serves when asked to compile the UNet (``--unet-compile-mode``): the benchmarked
# compiled variant, with the requested mode.
COMPILED_SERVING_VARIANT = "compile-layout"


def compiled_serving_options(compile_mode: str) -> dict[str, str]:
    return TORCH_VARIANTS[COMPILED_SERVING_VARIANT] | {"compile_mode": compile_mode}
