"""The PyTorch UNet runtime's variants by name: the config parameters (openspeedy.components.UNet options)
each one sets. Export (``--unet-variant``) and the benchmarks take them from here."""

from __future__ import annotations

VARIANTS: dict[str, dict[str, str]] = {
    "eager": {},
    "fused": {"fuse_qkv": "true"},
    # What a user gets from diffusers in two lines: fused QKV and torch.compile's default mode.
    "compile": {"fuse_qkv": "true", "compile_mode": "default"},
    # Temporal convolutions as 2D ones inside Inductor's channels-last graph (openspeedy/unet/layout.py).
    "compile-layout": {"fuse_qkv": "true", "temporal_conv2d": "true", "compile_mode": "default"},
    "eager-layout": {"fuse_qkv": "true", "temporal_conv2d": "true", "channels_last": "true"},
    # + the fused temporal attention kernel (openspeedy/unet/temporal_attention.py).
    "compile-attention": {"fuse_qkv": "true", "temporal_conv2d": "true", "temporal_attention_kernel": "true",
                          "compile_mode": "default"},
    # + the whole forward as one CUDA graph per shape (openspeedy/unet/cuda_graphs.py): the fastest
    # lossless runtime, what a GPU export serves by default.
    "fast": {"fuse_qkv": "true", "temporal_conv2d": "true", "temporal_attention_kernel": "true",
             "compile_mode": "default", "cuda_graphs": "true"},
    "cudagraphs": {"fuse_qkv": "true", "compile_mode": "reduce-overhead"},
    "autotune": {"fuse_qkv": "true", "compile_mode": "max-autotune-no-cudagraphs"},
    "fp8": {"fuse_qkv": "true", "fp8": "true", "compile_mode": "default"},
}
