"""Memory layout of the UNet's convolutions on the GPU: channels-last from end to end.

cuDNN's fast fp16 convolutions on Hopper are NHWC kernels. Given NCHW tensors, every call transposes
its input (and the output back): in the compiled UNet's profile those transposes were 8% of the GPU
time (bench/results/profile_compiled_unet_h200.txt). Inductor keeps 2D convolutions channels-last by
itself ("layout optimization"), but not the 88 temporal Conv3d of kernel (3, 1, 1), and every one of
them converts the layout twice.

A (3, 1, 1) convolution over (batch, channels, frames, height, width) is the same arithmetic as a
(3, 1) 2D convolution over (batch, channels, frames, height * width). As 2D convolutions they join
Inductor's channels-last graph, and their channels-last layout, (batch, frames, pixels, channels) in
memory, is exactly the layout of the spatial activations (batch * frames, height, width, channels)
around them, so the reshapes between the two are free. diffusers has no such option; it is this module.

The weights need the same layout. Inductor compiles the parameters as inputs of the graph, and its
convolution lowering makes each weight channels-last inside the graph: a copy of every convolution
weight in every call (1.6 GB read and written per UNet call at the published widths, 98 of the tiny
UNet's 107 convolutions), unless the weight already has that layout. ``to_channels_last`` converts them
once, at load; the compiled graph then hands them to cuDNN as they are (tests/unit/test_unet_speed_paths.py
reads the generated code for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openspeedy.module_swap import replace_modules


class TemporalConvAs2d(nn.Module):
    """An ``nn.Conv3d`` with kernel (k, 1, 1) computed as a 2D convolution of kernel (k, 1)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.kernel_size[1:] != (1, 1) or conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or conv.groups != 1:
            raise ValueError(f"only temporal (k, 1, 1) convolutions of stride 1 convert, got {conv}")
        if conv.padding_mode != "zeros" or conv.padding[1:] != (0, 0):
            raise ValueError(f"only zero padding along frames converts, got {conv}")
        self.weight = nn.Parameter(conv.weight.detach().squeeze(-1), requires_grad=False)  # (out, in, k, 1)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.padding = (conv.padding[0], 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        out = F.conv2d(x.reshape(batch, channels, frames, height * width), self.weight, self.bias, padding=self.padding)
        return out.reshape(batch, -1, frames, height, width)


def temporal_convs_as_2d(model: nn.Module) -> int:
    """Replaces every temporal (k, 1, 1) ``nn.Conv3d`` in ``model`` in place; returns how many."""
    return replace_modules(
        model, lambda m: isinstance(m, nn.Conv3d) and m.kernel_size[1:] == (1, 1), TemporalConvAs2d
    )


def to_channels_last(model: nn.Module) -> None:
    """4D convolution weights channels-last, once: compiled, no call copies them into that layout (see
    above); eager, cuDNN then picks NHWC kernels without transposing the weights on every call."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, TemporalConvAs2d)):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
