"""Adaptive average pooling written as two matrix products, so the UNet exports to ONNX with dynamic shapes.

`I2VGenXLUNet.image_latents_context_embedding` pools the image latents to 32x32 with
`nn.AdaptiveAvgPool2d`. ONNX has no adaptive pooling: the exporters lower it to a fixed-kernel
`AveragePool`, which needs the input size at export time and exists only when that size is a multiple
of the output size. Nothing in a library expresses adaptive pooling over a size that is only known
at run time, hence this small rewrite (the one hand-written replacement of the export path).

The windows are PyTorch's own (aten/src/ATen/native/AdaptivePooling.h):
    start(i) = floor(i * in / out),  end(i) = ceil((i + 1) * in / out)
A 0/1 matrix M[i, j] = start(i) <= j < end(i) per axis gives the window sums M_h @ x @ M_w^T; they are
then divided by the window height and then by the window width, the two divisions PyTorch's CPU
kernel makes, so wherever the window sums are exact (e.g. integer-valued inputs) the result is
bit-identical, and elsewhere it differs only by the order of the additions.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def _window_matrix(size: torch.Tensor | int, out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [out, size] 0/1 window matrix of one axis and the [out] window lengths, in ``like``'s dtype.

    ``size`` may be a traced tensor (the ONNX exporter records the arithmetic), so only tensor ops."""
    i = torch.arange(out, device=like.device, dtype=torch.int64)
    size = torch.as_tensor(size, device=like.device, dtype=torch.int64)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    j = torch.arange(size, device=like.device, dtype=torch.int64)
    matrix = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return matrix.to(like.dtype), (end - start).to(like.dtype)


class MatmulAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d(output_size)`` on [N, C, H, W] input, for any H and W."""

    def __init__(self, output_size: int | tuple[int, int]):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if any(s is None for s in self.output_size):
            raise ValueError("MatmulAdaptiveAvgPool2d needs an explicit output size on both axes")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_h, out_w = self.output_size
        rows, heights = _window_matrix(x.shape[-2], out_h, x)
        cols, widths = _window_matrix(x.shape[-1], out_w, x)
        sums = rows @ x @ cols.transpose(0, 1)
        return sums / heights[:, None] / widths[None, :]


@contextlib.contextmanager
def matmul_pooling(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``module`` is a ``MatmulAdaptiveAvgPool2d``.

    The swap is undone on exit, so the served PyTorch model keeps the original module; no weights are
    copied (pooling has none)."""
    swapped = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, MatmulAdaptiveAvgPool2d(child.output_size))
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
