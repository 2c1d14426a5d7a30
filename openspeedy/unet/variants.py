"""The ways the `unet` model can run, declared once: export, the server's loader and the benchmarks use these.

``RUNTIMES`` is what serves the model (chosen at export with ``--unet-runtime``): the diffusers weights
on PyTorch, the exported ONNX graph on onnxruntime, or a TensorRT engine. ``TORCH_VARIANTS`` are the
PyTorch runtime's option sets (the `unet` config parameters that ``components.UNet`` reads), by name.
"""

from __future__ import annotations

RUNTIMES = ("torch", "onnxruntime", "tensorrt")

_LAYOUT = {"fuse_qkv": "true", "temporal_conv2d": "true"}
_SHARED = _LAYOUT | {"temporal_attention_kernel": "true", "compile_mode": "default", "cuda_graphs": "true",
                     "share_cfg_rows": "true"}
_FUSED_GEGLU = _SHARED | {"fused_geglu": "true"}
_WEIGHTS = _FUSED_GEGLU | {"channels_last": "true"}
_JOINS = _WEIGHTS | {"channels_last_joins": "true"}
_TEMPORAL_CONVS = _JOINS | {"channels_last_temporal_convs": "true"}
_FAST = _TEMPORAL_CONVS | {"fused_residuals": "true"}

TORCH_VARIANTS: dict[str, dict[str, str]] = {
    "eager": {},
    "fused": {"fuse_qkv": "true"},
    # What a user gets from diffusers in two lines: fused QKV and torch.compile's default mode.
    "compile": {"fuse_qkv": "true", "compile_mode": "default"},
    # Temporal convolutions as 2D ones, channels-last weights: see openspeedy/unet/layout.py.
    "eager-layout": _LAYOUT | {"channels_last": "true"},
    "compile-layout": _LAYOUT | {"compile_mode": "default"},
    # + the fused temporal attention kernel (openspeedy/unet/temporal_attention.py).
    "compile-attention": _LAYOUT | {"temporal_attention_kernel": "true", "compile_mode": "default"},
    # + the whole forward as one CUDA graph per shape (openspeedy/cuda_graphs.py).
    "fast-unshared": _LAYOUT | {"temporal_attention_kernel": "true", "compile_mode": "default", "cuda_graphs": "true"},
    # + the CFG pair's layers before the first cross-attention once (openspeedy/unet/staged_forward.py).
    "fast-unfused-geglu": _SHARED,
    # + the feed-forward's GEGLU inside its matrix product (openspeedy/unet/geglu.py, QuACK on Hopper and
    # newer; elsewhere the option is off and this is the row above).
    "fast-nchw-weights": _FUSED_GEGLU,
    # + the convolution weights channels-last once at load, instead of in every call inside the compiled
    # graph (openspeedy/unet/layout.py).
    "fast-nchw-joins": _WEIGHTS,
    # + the up blocks' joins of the path and its skip connections written channels-last
    # (openspeedy/unet/layout.py).
    "fast-nchw-temporal": _JOINS,
    # + the temporal convolutions' inputs written channels-last (openspeedy/unet/layout.py).
    "fast-unfused-residuals": _TEMPORAL_CONVS,
    # + the transformer blocks' residual additions inside the matrix products before them
    # (openspeedy/unet/residual_gemm.py, QuACK on Hopper and newer): the fastest lossless runtime.
    "fast": _FAST,
    # + Programmatic Dependent Launch of Inductor's Triton kernels (Hopper and newer): each may start
    # while the kernel before it drains, instead of after it ends. Measured slower on an H100 (112.6
    # against 110.5 ms a call), so `fast` leaves it off.
    "fast-pdl": _FAST | {"inductor_options": "triton.enable_pdl=true"},
    # + Inductor's coordinate-descent tuning of its own kernels' launch settings and 1x1 convolutions as
    # matrix products (the settings diffusers' speed guide used for SDXL). Not timed: on an H200 its
    # compile at 16x512x512 had not finished after about 290 s, where `fast` compiles in 167 s.
    "fast-tuned": _FAST | {"inductor_options": "coordinate_descent_tuning=true,conv_1x1_as_mm=true"},
    "autotune": {"fuse_qkv": "true", "compile_mode": "max-autotune-no-cudagraphs"},
    "cudagraphs": {"fuse_qkv": "true", "compile_mode": "reduce-overhead"},
    "fp8": {"fuse_qkv": "true", "fp8": "true", "compile_mode": "default"},
    "fp8-eager": {"fuse_qkv": "true", "fp8": "true"},
}

# What export serves when asked to compile the UNet (``--unet-compile-mode``): the fastest benchmarked
# variant, with the requested mode.
COMPILED_SERVING_VARIANT = "fast"


def compiled_serving_options(compile_mode: str) -> dict[str, str]:
    options = TORCH_VARIANTS[COMPILED_SERVING_VARIANT] | {"compile_mode": compile_mode}
    if compile_mode == "reduce-overhead":
        # That mode graphs the kernels itself; a whole-forward capture around it is not nested.
        options.pop("cuda_graphs", None)
    return options
