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
UNet's 107 convolutions), unless the weight already has that layout. ``channels_last`` converts them
once, at load; the compiled graph then hands them to cuDNN as they are (tests/unit/unet/test_layout.py
reads the generated code for it).

The up blocks' joins need it too. Each resnet of an up block takes the concatenation of the path and a
skip connection; Inductor (torch 2.11) writes that concatenation in the contiguous layout, because the
group norm that reads it first fixes its layout before the 1x1 shortcut convolution asks for
channels-last. Every such resnet then read it transposed in the norm's elementwise kernel and wrote a
channels-last copy for the shortcut: at the 64x64 level one of these kernels took 0.98 ms on an H100,
where moving its bytes once takes about 0.25 ms, and together they were the graph's slowest elementwise
kernels (3.6 ms of a call). ``channels_last_joins`` asks for the layout at each join, so the
concatenation is written channels-last once and read as it lies: a call 2.1 ms faster on that H100.

So do the temporal convolutions' inputs. Each is the output of a group norm and SiLU over the
(batch, channels, frames, height, width) view of the activations, and Inductor (torch 2.11) wrote that
output in the contiguous 5D layout: the norm's elementwise kernel read the channels-last activations and
wrote them transposed, and a second kernel transposed them back to channels-last for the convolution.
On an H100 the second kernel alone took 59 us at the 64x64 level, 16 of them in a call, and the
transposes of all levels about 2 ms of a call. ``channels_last_temporal_convs`` asks for the layout at
each temporal convolution's input, so the norm writes it channels-last, as the convolution reads it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
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


def temporal_conv2d(model: nn.Module) -> int:
    """Replaces every temporal (k, 1, 1) ``nn.Conv3d`` in ``model`` in place; returns how many."""
    return replace_modules(
        model, lambda m: isinstance(m, nn.Conv3d) and m.kernel_size[1:] == (1, 1), TemporalConvAs2d
    )


def channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    """Strides of a (batch, channels, *spatial) tensor with the channels fastest and the batch slowest:
    torch.channels_last for 4D shapes, torch.channels_last_3d for 5D ones."""
    strides, step = [0] * len(shape), 1
    for dim in (1, *range(len(shape) - 1, 1, -1), 0):
        strides[dim] = step
        step *= shape[dim]
    return tuple(strides)


class ChannelsLastInput(nn.Module):
    """A module whose first input is channels-last in the compiled graph (see above). A wrapper, not a
    forward hook: torch.compile does not guard on hooks, so in one process a UNet without them would
    reuse the graph of one with them, or the other way round."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if torch.compiler.is_compiling():  # eager, each operation takes the layout its inputs have
            # Inductor's own primitive for a layout requirement: its lowering of clone ignores memory_format
            # and leaves the layout to the first reader.
            x = torch.ops.prims.inductor_force_stride_order(x, channels_last_strides(x.shape))
        return self.module(x, *args, **kwargs)


def _wrap_inputs(model: nn.Module, matches: Callable[[nn.Module], bool]) -> int:
    import torch._inductor.inductor_prims  # noqa: F401  registers the primitive

    return replace_modules(model, matches, ChannelsLastInput)


def channels_last_joins(model: nn.Module) -> int:
    """Wraps each up block resnet of ``model`` in place, so the path joined with a skip connection is
    channels-last (see ``ChannelsLastInput``); returns how many."""
    return _wrap_inputs(model.up_blocks, lambda m: isinstance(m, ResnetBlock2D))


def channels_last_temporal_convs(model: nn.Module) -> int:
    """Wraps each ``TemporalConvAs2d`` of ``model`` in place, so its input is channels-last (see
    ``ChannelsLastInput``); returns how many."""
    return _wrap_inputs(model, lambda m: isinstance(m, TemporalConvAs2d))


def channels_last(model: nn.Module) -> int:
    """4D convolution weights channels-last, once: compiled, no call copies them into that layout (see
    above); eager, cuDNN then picks NHWC kernels without transposing the weights on every call. Returns
    how many weights."""
    converted = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, TemporalConvAs2d)):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
            converted += 1
    return converted
