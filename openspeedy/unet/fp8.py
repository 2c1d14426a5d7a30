"""FP8 (e4m3) matrix products for the UNet's linear layers, through torchao (the ``fp8`` extra).

torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` quantizes each weight once,
one scale per output channel, and each activation at every call, one scale per row (token): one large
token no longer flattens the others, as a single scale per tensor does. Convolutions, norms and
attention stay in 16-bit. Lossy: the benchmark reports the video's error against ``fast``'s.

Why bfloat16: torchao's row-wise scaled products take bfloat16 weights only. The FP8 preset therefore
runs the UNet in bfloat16 (``unet_dtype``: export and the benchmarks give the `unet` model bfloat16
where the other components are float16; the contract's tensors are float32 either way), rather than
keeping a hand-written per-tensor ``torch._scaled_mm`` path for float16: one path, the library's,
which Inductor also knows how to compile.

Where it cannot run (torchao missing, no CUDA GPU of compute capability 8.9 or newer, weights not
bfloat16) the technique is skipped and the load log says why (openspeedy/unet/recipe.py): the UNet then
computes in 16-bit, the more exact result.
"""

from __future__ import annotations

import torch
from torch import nn

from openspeedy.unet.options import UNetOptions

INSTALL = "pip install 'openspeedy[fp8]'"
DTYPE = torch.bfloat16


def unet_dtype(options: UNetOptions, dtype: str) -> str:
    """The `unet` model's dtype where the components compute in ``dtype``: bfloat16 in place of float16
    where ``options`` turn fp8 on (see the module docstring); ``dtype`` otherwise (float32 on CPUs, where
    FP8 is skipped anyway)."""
    return "bfloat16" if options.fp8 and dtype == "float16" else dtype


def fp8_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FP8 linears cannot run on ``device`` in ``dtype``, or None where they can."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"FP8 needs compute capability 8.9+ (a CUDA GPU: Ada, Hopper or newer), this UNet runs on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return (f"FP8 needs compute capability 8.9+, {torch.cuda.get_device_name(device)} has "
                f"{capability[0]}.{capability[1]}")
    try:
        __import__("torchao.quantization")  # through builtins.__import__, which tests replace
    except ImportError:
        return f"torchao is not installed; {INSTALL}"
    if dtype != DTYPE:
        return f"torchao's row-wise FP8 takes bfloat16 weights, this UNet is {str(dtype).removeprefix('torch.')}"
    return None


def fits_fp8_kernels(module: nn.Module, _name: str = "") -> bool:
    """A linear layer whose sizes the FP8 products take (multiples of 16); torchao's ``filter_fn``."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def quantize_linears(model: nn.Module) -> int:
    """Every linear layer of ``model`` that fits the FP8 kernels to torchao's dynamic row-wise FP8, in
    place; returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(fits_fp8_kernels(module) for module in model.modules())
    # set_inductor_config=False: torchao would otherwise change Inductor's global settings, for every
    # model compiled later in the process (the VAE's too); the UNet's own are inductor_options.
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(model, config, filter_fn=fits_fp8_kernels)
    return count
