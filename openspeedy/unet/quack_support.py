"""Whether QuACK's kernels (Tri Dao's CuTe-DSL GEMMs for Hopper and newer) can run here, and why not: the
fused GEGLU (openspeedy/unet/fused_geglu.py) and the fused residual additions (openspeedy/unet/fused_residuals.py)
are speed preferences that fall back to diffusers' arithmetic where they cannot."""

from __future__ import annotations

import torch

INSTALL = "pip install 'openspeedy[hopper]'"


def kernel_unavailable(device: torch.device, dtype: torch.dtype, kernel_module: str) -> str | None:
    """Why the QuACK kernel that ``kernel_module`` builds cannot run on ``device`` in ``dtype``, or None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "it runs on CUDA GPUs only"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return f"it needs compute capability 9.0 (Hopper) or newer, {torch.cuda.get_device_name(device)} has less"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it computes in float16 or bfloat16, the weights are {dtype}"
    try:
        __import__(kernel_module)  # through builtins.__import__, which tests replace to simulate a failure
    except Exception as error:  # whatever stops the kernel, diffusers' arithmetic runs instead
        # Seen: ImportError (not installed), RuntimeError (CUTLASS's DSL found no CUDA build the driver
        # takes), OSError (a library it loads), TypeError (QuACK could not fingerprint an epilogue: it
        # walks into any function whose file is not under a site-packages folder, so a DSL installed
        # elsewhere fails here).
        return f"QuACK is not usable here ({type(error).__name__}: {error}); {INSTALL}"
    return None


def dense_rows(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (2D) as QuACK's tensor-memory loads need it, each row's elements adjacent and the rows
    back to back: itself where it is already, a contiguous copy otherwise."""
    if matrix.stride(-1) == 1 and matrix.stride(0) == matrix.shape[-1]:
        return matrix
    return matrix.contiguous()
