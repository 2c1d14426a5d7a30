"""The feed-forward's GEGLU as one matrix product with the activation in its epilogue (a Triton kernel).

diffusers' GEGLU computes ``value, gate = proj(x).chunk(2, -1); value * gelu(gate)``: cuBLAS writes the
projection's full 2 x inner output, then a separate kernel reads it back for ``gelu * mul``. At 16
frames 512x512 with CFG the first feed-forward product of a 64x64-level block writes 0.67 GB and the
activation moves 1 GB more: the activation kernels alone were ~5% of a compiled UNet call and the product
ran at ~400 TFLOP/s (K = 320 is short for the tensor cores). No library fuses an activation that reads
two column blocks of one product (Inductor's epilogue fusion needs an elementwise function of each
output element; cuBLASLt's epilogues are per element too), so this kernel does: each program computes
the same output tile of the value half and of the gate half from one load of ``x`` and writes only
``value * gelu(gate)``, half the product's bytes.

Measured on an H200 it is slower than what it replaces at every UNet shape (docs/speed.md: a plain
Triton GEMM does not reach cuBLAS at K = 320), so the served ``fast`` variant does not use it; the
option ``fused_geglu`` and the variant ``fast-geglu`` keep the comparison reproducible.

The arithmetic: float32 accumulation, bias and exact (erf) GELU in float32 on the accumulators, one
rounding to the output dtype, where diffusers rounds the projection first: the result agrees with it to
the dtype's rounding. Elsewhere (CPU, float32, a shape or dtype the kernel does not take) the op is
diffusers' arithmetic itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openspeedy.module_swap import replace_modules

try:  # Triton comes with CUDA builds of torch; CPU machines use the reference arithmetic
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None


def kernel_supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # float32 stays on cuBLAS: tl.dot would round it to TF32, and the lossless paths are 16-bit.
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and weight.dtype == x.dtype and weight.is_contiguous() and weight.shape[0] % 2 == 0
            and x.shape[-1] % 16 == 0 and weight.shape[0] // 2 % 16 == 0)


if triton is not None:

    def _configs():
        shapes = [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4), (128, 64, 64, 8, 3),
                  (256, 64, 64, 8, 3), (64, 128, 64, 4, 4)]  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
                for m, n, k, w, s in shapes]

    @triton.autotune(configs=_configs(), key=["M", "N", "K"])
    @triton.jit
    def _geglu_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M, N, K, x_row, w_row, o_row, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # Programs walk GROUP_M row tiles per column tile, so neighbours share x's tiles in L2.
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = GROUP_M * tiles_n
        first_m = (pid // group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        # One product of 2 x BLOCK_N columns, value and gate interleaved (even: value row n of the weight,
        # odd: gate row N + n): one wide tensor-core tile instead of two narrow ones, split in registers.
        pairs = tl.arange(0, 2 * BLOCK_N)
        cols = pid_n * BLOCK_N + pairs // 2
        weight_rows = cols + (pairs % 2) * N
        ks = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + rows[:, None] * x_row + ks[None, :]
        w_ptrs = w_ptr + weight_rows[None, :].to(tl.int64) * w_row + ks[:, None]  # W^T's [BLOCK_K, 2 BLOCK_N]
        row_ok, col_ok = rows[:, None] < M, cols[None, :] < N
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_ok = ks < K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
            acc = tl.dot(x, tl.load(w_ptrs, mask=k_ok[:, None] & col_ok, other=0.0), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        if HAS_BIAS:
            acc += tl.load(b_ptr + weight_rows, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        value, gate = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
        out = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
        out_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(o_ptr + rows[:, None] * o_row + out_cols[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=row_ok & (out_cols[None, :] < N))


@torch.library.custom_op("openspeedy::geglu", mutates_args=())
def geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``value * gelu(gate)`` where ``value, gate = F.linear(x, weight, bias).chunk(2, -1)``."""
    if not kernel_supports(x, weight):
        return reference_geglu(x, weight, bias)
    inner, width = weight.shape[0] // 2, x.shape[-1]
    rows = x.reshape(-1, width)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], inner, dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(rows.shape[0], meta["BLOCK_M"]) * triton.cdiv(inner, meta["BLOCK_N"]),)

    with torch.cuda.device(x.device):
        _geglu_kernel[grid](rows, weight, bias if bias is not None else weight, out, rows.shape[0], inner, width,
                            rows.stride(0), weight.stride(0), out.stride(0), HAS_BIAS=bias is not None)
    return out.reshape(*x.shape[:-1], inner)


@geglu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


def reference_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """diffusers' GEGLU arithmetic."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


class FusedGEGLU(nn.Module):
    """diffusers' ``GEGLU`` through ``geglu``; it keeps the original's ``proj``, so its weights load as before."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.proj = original.proj

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return geglu(hidden_states, self.proj.weight, self.proj.bias)


def use_fused_geglu(unet: nn.Module) -> int:
    """Replaces every diffusers ``GEGLU`` in the UNet's feed-forwards by ``FusedGEGLU``; returns how many."""
    from diffusers.models.activations import GEGLU

    return replace_modules(unet, lambda m: type(m) is GEGLU and isinstance(m.proj, nn.Linear), FusedGEGLU)
