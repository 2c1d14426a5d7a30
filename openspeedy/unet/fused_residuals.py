"""The transformer blocks' residual additions inside the matrix products before them, through QuACK.

Each of the UNet's 33 transformer blocks adds three results to its running hidden states: the
self-attention's and the cross-attention's output projections and the feed-forward's second linear
layer (``hidden_states = ff(norm(hidden_states)) + hidden_states`` in diffusers' BasicTransformerBlock);
the image-latent encoder adds two. cuBLAS writes each product, then Inductor reads it back with the
hidden states in a kernel of its own and writes their sum: at 16 frames 512x512 with CFG those
additions took about 2 ms of a 108 ms compiled call on an H100. Product written, product read,
hidden states read, sum written: four passes over the activations (84 MB each at 64x64) where the
fused kernel makes two, reading the hidden states and writing the sum. cuBLAS's epilogue takes a bias but no
second matrix; QuACK's GEMM takes both (``gemm_add``: D = A @ B + C + bias, in float32 accumulators,
rounded once). Fused, a call took 104.4 instead of 106.6 ms, and 104.7 instead of 108.1 on a second
H100 (bench/results/unet_calls_fused_residuals*_h100.json).

The additions are diffusers' code, in the block's forward and not in any module that could be swapped,
so the fusion is a pass of the compiler (``LinearResidualPass``): it finds ``linear(x) + residual``
in the graph that Inductor is about to lower and calls ``linear_residual`` instead. Where the kernel
cannot run the option is off and the UNet's load log says why (openspeedy/unet/recipe.py).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.utils.flop_counter import register_flop_formula

from openspeedy.unet import quack_support

log = logging.getLogger(__name__)

aten = torch.ops.aten
_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


@torch.library.custom_op("openspeedy::linear_residual", mutates_args=())
def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor:
    """``x`` flattened row-major to rows of the weight's input features, through ``F.linear(rows, weight,
    bias)``, and added to ``residual`` of as many elements (any shape). QuACK's GEMM with the addition in
    its epilogue for half-precision CUDA tensors of 16-byte rows, PyTorch's arithmetic elsewhere (the pass
    does not know where the graph will run)."""
    rows = x.reshape(-1, weight.shape[1])  # as the graph's view(x, [rows, in]) did
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and residual.dtype == x.dtype
            and weight.shape[1] % 8 == 0 and weight.shape[0] % 8 == 0):
        return F.linear(rows, weight, bias).reshape(residual.shape) + residual
    from quack.gemm_interface import gemm_add

    # A reshape of the layouts met here is a view, not a copy.
    added = quack_support.dense_rows(residual.reshape(rows.shape[0], weight.shape[0]))
    with torch.cuda.device(x.device):
        return gemm_add(quack_support.dense_rows(rows), weight.T, added, bias=bias).reshape(residual.shape)


@linear_residual.register_fake
def _(x, weight, bias, residual):
    return residual.new_empty(residual.shape)


@register_flop_formula(torch.ops.openspeedy.linear_residual)
def _linear_residual_flops(x_shape, weight_shape, bias_shape, residual_shape, out_shape=None, **kwargs) -> int:
    """The matrix product, as FlopCounterMode counts the linear layer this op replaces: 2 x rows x in x out,
    whatever shape ``x`` has."""
    return 2 * math.prod(x_shape) * weight_shape[0]


def _linear_behind(node: torch.fx.Node):
    """(x, weight, bias) where ``node`` is ``F.linear(x, weight, bias)`` of activations with leading axes
    as the graph spells it after AOT autograd: ``view(addmm(bias, view(x, [rows, in]), t(weight)), shape)``,
    possibly divided by 1 (diffusers' attention output divided by its rescale_output_factor), each step
    used only once; else None. A bare addmm, a linear layer of 2D input, is left alone: in this UNet
    those are the embeddings' few rows, where a GEMM's launch is all there is to save."""
    if node.target is aten.div.Tensor and node.args[1] == 1 and len(node.users) == 1:
        node = node.args[0]
    if node.target not in _VIEWS or len(node.users) != 1:
        return None
    product = node.args[0]
    if (not isinstance(product, torch.fx.Node) or product.target is not aten.addmm.default or product.kwargs
            or len(product.users) != 1):
        return None
    bias, rows, transposed = product.args
    if rows.target not in _VIEWS or bias.meta["val"].ndim != 1:
        return None
    if transposed.target is aten.t.default or (transposed.target is aten.permute.default
                                               and list(transposed.args[1]) == [1, 0]):
        return rows.args[0], transposed.args[0], bias
    return None


def fuse_linear_residuals(graph: torch.fx.Graph) -> int:
    """Replaces each ``linear(x) + residual`` of the same shape and dtype (no broadcast) by
    ``linear_residual``; returns how many."""
    fused = 0
    for add in list(graph.find_nodes(op="call_function", target=aten.add.Tensor)):
        if add.kwargs or not all(isinstance(a, torch.fx.Node) for a in add.args):
            continue
        for branch, residual in (add.args, add.args[::-1]):
            found = _linear_behind(branch)
            result, other = add.meta["val"], residual.meta["val"]
            if found is None or other.shape != result.shape or other.dtype != result.dtype:
                continue
            if branch.meta["val"].shape != result.shape or branch.meta["val"].dtype != result.dtype:
                continue
            with graph.inserting_before(add):
                replacement = graph.call_function(torch.ops.openspeedy.linear_residual.default, (*found, residual))
            replacement.meta["val"] = other.new_empty(other.shape)  # what the op's fake returns
            add.replace_all_uses_with(replacement)
            graph.erase_node(add)
            fused += 1
            break
    graph.eliminate_dead_code()
    log.info("unet: %d residual additions fused into their matrix products", fused)
    return fused


class LinearResidualPass(CustomGraphPass):
    """``fuse_linear_residuals`` as an Inductor post-grad pass; the uuid (this file's hash) keys the
    on-disk compile caches, which skip a graph with a pass they cannot name."""

    def __init__(self):
        self.fused = 0  # additions fused in the graphs compiled so far

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.fused += fuse_linear_residuals(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))


def kernel_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why QuACK's GEMM with the addition cannot run on ``device`` in ``dtype``, or None where it can."""
    return quack_support.kernel_unavailable(device, dtype, "quack.gemm_interface")


def fused_residual_settings(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """The Inductor settings that install the pass where the kernel can run; none elsewhere
    (``kernel_unavailable`` says why)."""
    if kernel_unavailable(device, dtype) is not None:
        return {}
    return {"post_grad_custom_pre_pass": LinearResidualPass()}
