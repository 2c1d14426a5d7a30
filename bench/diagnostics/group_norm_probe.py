"""A temporal convolution's input path alone, as the `fast` UNet compiles it: the channels-last
activations of a level viewed as (batch, channels, frames, height, width), a group norm and SiLU
written channels-last (the layout requirement of openspeedy/unet/layout.py), then the (3, 1)
convolution. Compiled with Inductor's default settings, with two-dimensional tiles preferred
(`triton.prefer_nd_tiling`) and with coordinate-descent tuning of its kernels' launch settings;
each row is the GPU time per kernel (the profiler's, over 20 calls) at the UNet's 64x64 and 32x32
levels (CFG batch 2, 16 frames), and the compile seconds. RANDOM parameters: real speed only.

Why alone: these settings apply to the whole graph, and a full-size UNet compile takes minutes
per setting; this shows in seconds what each does to the group norm's kernels.

Usage: python -m bench.diagnostics.group_norm_probe --out DIR [--smoke]
Writes DIR/group_norm_probe.json after every measurement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.common import DEVICE, Results, synchronize
from openspeedy.unet.layout import channels_last, channels_last_temporal_convs, temporal_conv2d

SETTINGS = {"default": {}, "prefer_nd_tiling": {"triton.prefer_nd_tiling": True},
            "coordinate_descent": {"coordinate_descent_tuning": True}}
FRAMES = 16


class TemporalConvInput(nn.Module):
    """diffusers' TemporalConvLayer.conv1 (group norm, SiLU, a (3, 1, 1) convolution) after the `fast`
    variant's layout changes: the convolution as a (3, 1) 2D one with channels-last weights, its input
    required channels-last (openspeedy/unet/layout.py's own functions, as the UNet applies them)."""

    def __init__(self, channels: int):
        super().__init__()
        conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.conv1 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), conv)
        temporal_conv2d(self)
        channels_last(self)
        channels_last_temporal_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch * frames, channels, height, width) -> (batch, channels, frames, height, width), as diffusers does
        video = x[None].reshape((-1, FRAMES) + x.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.conv1(video)


def kernel_times(fn, x: torch.Tensor, calls: int = 20) -> dict[str, float]:
    """Microseconds per call of each kernel (on a CPU, of each operator: the smoke run's stand-in)."""
    cuda = DEVICE.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn(x)
        synchronize()
    return {event.key: (event.device_time_total if cuda else event.self_cpu_time_total) / calls
            for event in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="one small level, float32: checks the script on a CPU")
    args = parser.parse_args()
    dtype = torch.float32 if args.smoke else torch.float16
    levels = ((64, 8),) if args.smoke else ((320, 64), (640, 32))  # (channels, height = width)
    results = Results(args.out / "group_norm_probe.json", frames=FRAMES, batch=2, dtype=str(dtype).split(".")[-1])
    for channels, size in levels:
        x = torch.randn(2 * FRAMES, channels, size, size, device=DEVICE, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        for name, settings in SETTINGS.items():
            torch._dynamo.reset()
            fn = torch.compile(TemporalConvInput(channels).to(DEVICE, dtype), options=settings, dynamic=False)
            started = time.perf_counter()
            with torch.no_grad():
                fn(x)
                synchronize()
                compile_s = time.perf_counter() - started
                for _ in range(5):
                    fn(x)
                kernels = {key: us for key, us in kernel_times(fn, x).items() if us > 0}
            results.append("rows", dict(
                channels=channels, size=size, settings=name, compile_s=compile_s,
                triton_us=sum(us for key, us in kernels.items() if key.startswith("triton")),
                total_us=sum(kernels.values()), kernels=kernels))


if __name__ == "__main__":
    main()
