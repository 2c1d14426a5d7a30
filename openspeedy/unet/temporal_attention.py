"""Temporal self-attention of the I2VGen-XL UNet as one fused Triton kernel.

Every temporal transformer attends over the frames of one pixel: at 16 frames 512x512 with CFG that is
8192 sequences of 16 tokens, 5 heads of 64. At those shapes PyTorch's SDPA backends run 5-8x above the
memory limit (cuDNN 0.68 ms, memory-efficient 0.45 ms against ~0.08 ms to read q, k, v and write the
output once on an H200), and the head transposes around them copy the tensors again. No library
kernel targets sequences this short with this many batches, so this module is one: a program per
(sequence, head) loads its q, k and v straight from the projection's output (fused QKV or not, any
stride), computes softmax(q k^T / sqrt(d)) v in registers and writes the heads back in place.

The arithmetic is SDPA's: scores and softmax in float32, probabilities rounded to the input dtype
before the product with v (as the flash kernels do), so the result agrees with SDPA to the input
dtype's rounding. Elsewhere (CPU, head sizes the kernel does not take) the op is SDPA itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

try:  # Triton comes with CUDA builds of torch; CPU machines fall back to SDPA
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

HEAD_DIMS = (16, 32, 64, 128)  # tl.dot wants every dimension >= 16; powers of two keep the tiles exact


def kernel_supports(query: torch.Tensor, head_dim: int) -> bool:
    return triton is not None and query.is_cuda and head_dim in HEAD_DIMS and query.dtype in (
        torch.float16, torch.bfloat16, torch.float32)


if triton is not None:

    @triton.jit
    def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, q_batch, q_token, k_batch, k_token, v_batch, v_token,
                          o_batch, o_token, frames, scale, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
                          PRECISION: tl.constexpr):
        sequence = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        tokens = tl.arange(0, BLOCK)
        columns = head * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        valid = tokens[:, None] < frames
        q = tl.load(q_ptr + sequence * q_batch + tokens[:, None] * q_token + columns, mask=valid, other=0.0)
        k = tl.load(k_ptr + sequence * k_batch + tokens[:, None] * k_token + columns, mask=valid, other=0.0)
        v = tl.load(v_ptr + sequence * v_batch + tokens[:, None] * v_token + columns, mask=valid, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # float32 accumulation
        scores = tl.where(tokens[None, :] < frames, scores, float("-inf"))
        scores = scores - tl.max(scores, 1)[:, None]
        weights = tl.exp(scores)
        weights = weights / tl.sum(weights, 1)[:, None]
        out = tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
        tl.store(o_ptr + sequence * o_batch + tokens[:, None] * o_token + columns, out.to(o_ptr.dtype.element_ty),
                 mask=valid)


@torch.library.custom_op("openspeedy::temporal_attention", mutates_args=())
def temporal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention over dim 1 of [sequences, tokens, heads * head_dim] q, k, v (last dim contiguous);
    returns [sequences, tokens, heads * head_dim], contiguous."""
    sequences, frames, width = query.shape
    head_dim = width // heads
    if not kernel_supports(query, head_dim) or any(t.stride(-1) != 1 for t in (query, key, value)):
        return _sdpa(query, key, value, heads)
    out = torch.empty(sequences, frames, width, dtype=query.dtype, device=query.device)
    block = max(16, triton.next_power_of_2(frames))
    with torch.cuda.device(query.device):
        _attention_kernel[(sequences, heads)](
            query, key, value, out, query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0),
            value.stride(1), out.stride(0), out.stride(1), frames, 1.0 / math.sqrt(head_dim), HEAD_DIM=head_dim,
            BLOCK=block, num_warps=2 if block * head_dim <= 16 * 64 else 4,
            # tl.dot rounds float32 inputs to TF32 unless told: float32 stays float32, like SDPA's math.
            PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        )
    return out


@temporal_attention.register_fake
def _(query, key, value, heads):
    return torch.empty(query.shape, dtype=query.dtype, device=query.device)


@register_flop_formula(torch.ops.openspeedy.temporal_attention)
def _temporal_attention_flops(query_shape, key_shape, value_shape, heads, out_shape=None, **kwargs) -> int:
    """Attention's two matrix products, as FlopCounterMode counts the SDPA this op replaces (the counter
    knows no custom op: without this a UNet's count leaves the temporal attentions out)."""
    sequences, frames, width = query_shape
    return 4 * sequences * frames * key_shape[1] * width


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """diffusers' AttnProcessor2_0 arithmetic, for whatever the kernel does not take."""
    sequences, frames, width = query.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(sequences, -1, heads, width // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value), dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(sequences, frames, width).to(query.dtype)


class TemporalAttentionProcessor:
    """A diffusers attention processor for plain self-attention over frames, through ``temporal_attention``.

    It computes what diffusers' (fused) AttnProcessor2_0 computes for these modules: projections, SDPA's
    default scale 1/sqrt(head_dim), output projection. Anything else (cross-attention, masks, norms
    inside the attention) goes to the processor it replaced."""

    def __init__(self, fallback):
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        plain = (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                 and attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None
                 and attn.norm_k is None and not attn.residual_connection and attn.rescale_output_factor == 1.0)
        if not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out = temporal_attention(query, key, value, attn.heads)
        return attn.to_out[1](attn.to_out[0](out))


def use_temporal_attention(unet: nn.Module) -> int:
    """Gives every attention inside the UNet's temporal transformers the fused processor; returns how many.
    Call after ``fuse_qkv_projections`` (which would otherwise replace the processors again)."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    changed = 0
    for module in unet.modules():
        if isinstance(module, TransformerTemporalModel):
            for attention in module.modules():
                if hasattr(attention, "set_processor") and hasattr(attention, "processor"):
                    attention.set_processor(TemporalAttentionProcessor(attention.processor))
                    changed += 1
    return changed
