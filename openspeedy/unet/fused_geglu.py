"""The feed-forward's GEGLU as one matrix product with the activation in its epilogue, through QuACK.

diffusers' GEGLU computes ``value, gate = proj(x).chunk(2, -1); value * gelu(gate)``: cuBLAS writes the
projection's full 2 x inner output, then a separate kernel reads it back for ``gelu * mul``. At 16 frames
512x512 with CFG that activation is ~5% of a compiled UNet call, and Inductor cannot fuse it into
cuBLAS. QuACK (Tri Dao's CuTe-DSL kernels for Hopper and newer) runs a warp-specialized persistent GEMM
whose epilogue is ours to write: with the weight's rows reordered once into (gate, value) pairs, the
epilogue adds the bias, applies exact (erf) GELU and the product to the float32 accumulators and stores
only ``value * gelu(gate)``, half the product's bytes (openspeedy/unet/fused_geglu_kernel.py). One rounding
where diffusers has two, so the result is as close to float32 arithmetic as diffusers' or closer.

Where the kernel cannot run (no CUDA, a GPU older than Hopper, float32, QuACK not installed) the option
leaves diffusers' GEGLU in place and the UNet's load log says why (openspeedy/unet/recipe.py): it is a
speed preference, not a contract.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from openspeedy.module_swap import replace_modules
from openspeedy.unet import quack_support


def kernel_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernel cannot run on ``device`` in ``dtype``, or None where it can."""
    return quack_support.kernel_unavailable(device, dtype, "openspeedy.unet.fused_geglu_kernel")


def pair_rows(tensor: torch.Tensor) -> torch.Tensor:
    """diffusers' [value; gate] rows (or bias entries) as gate_0, value_0, gate_1, value_1, ...: the
    epilogue sees adjacent output columns together."""
    inner = tensor.shape[0] // 2
    return torch.stack([tensor[inner:], tensor[:inner]], dim=1).reshape(tensor.shape).contiguous()


@torch.library.custom_op("openspeedy::paired_geglu", mutates_args=())
def paired_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` for a weight and bias in ``pair_rows`` order; QuACK's kernel on a CUDA
    tensor, the same arithmetic in PyTorch elsewhere."""
    if not x.is_cuda:
        return paired_reference(x, weight, bias)
    from openspeedy.unet.fused_geglu_kernel import geglu_rows

    rows = quack_support.dense_rows(x.reshape(-1, x.shape[-1]))
    with torch.cuda.device(x.device):
        out = geglu_rows(rows, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0] // 2)


@paired_geglu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


@register_flop_formula(torch.ops.openspeedy.paired_geglu)
def _paired_geglu_flops(x_shape, weight_shape, bias_shape, out_shape=None, **kwargs) -> int:
    """The projection's matrix product, as FlopCounterMode counts the linear layer this op replaces (the
    counter knows no custom op, so without this a UNet's count would leave the feed-forwards' first half out)."""
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * weight_shape[0]


def paired_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    projected = F.linear(x, weight, bias)
    return projected[..., 1::2] * F.gelu(projected[..., 0::2])


def reference_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """diffusers' GEGLU arithmetic."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


class PairedGEGLU(nn.Module):
    """diffusers' ``GEGLU`` through ``paired_geglu``. It holds its projection's rows paired instead of
    diffusers' order (the weights are not kept twice), so it is swapped in after the checkpoint has loaded."""

    def __init__(self, original: nn.Module):
        super().__init__()
        weight = original.proj.weight.detach()
        bias = original.proj.bias
        bias = weight.new_zeros(weight.shape[0]) if bias is None else bias.detach()
        self.weight = nn.Parameter(pair_rows(weight), requires_grad=False)
        self.bias = nn.Parameter(pair_rows(bias), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return paired_geglu(hidden_states, self.weight, self.bias)


def _fits(module: nn.Module) -> bool:
    from diffusers.models.activations import GEGLU

    # 16-byte rows for the kernel's tensor-memory loads and stores: in and inner features (half the
    # projection's outputs) in multiples of 8 half-precision values.
    return (type(module) is GEGLU and isinstance(module.proj, nn.Linear) and module.proj.in_features % 8 == 0
            and module.proj.out_features % 16 == 0)


def use_fused_geglu(unet: nn.Module) -> int:
    """Replaces every diffusers ``GEGLU`` in the UNet's feed-forwards by ``PairedGEGLU`` where the kernel
    can run; returns how many (0 where it cannot: ``kernel_unavailable`` says why)."""
    parameter = next(unet.parameters())
    if kernel_unavailable(parameter.device, parameter.dtype) is not None:
        return 0
    return replace_modules(unet, _fits, PairedGEGLU)
