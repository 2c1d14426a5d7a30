"""A model's whole forward replayed as one CUDA graph, per input shape: the UNet's and the CLIP encoders'.

The compiled UNet's GPU time at 16 frames 512x512 is ~128 ms a call, but its CPU side (dynamo's guards,
lifting ~340 parameters, Inductor's launch of each kernel) takes 5-10 ms of it, and the GPU waits:
the denoising loop hands the UNet one call at a time. torch.compile's "reduce-overhead" mode graphs the
kernels but keeps the guards and wrappers on every call. Capturing the whole forward once (after a
warm-up, which compiles and tunes) and replaying it leaves one copy per input and one graph launch.
The CLIP encoders are the same story in small: on an H200 an eager call of the text encoder took 19 ms
and one of the image encoder 36 ms, most of it Python launching kernels; replayed, 2.4 and 6.7 ms, the
image's resize on the CPU included (docs/speed.md).

Each graph keeps static input buffers and its own memory pool (the activations of one forward, about
the model's eager peak); the call copies its inputs in and returns clones of the outputs, so the next
replay cannot overwrite what a caller holds. Shapes never captured run ``fn`` directly, and so does every
shape past ``max_graphs``: requests choose their sizes, and each graph holds gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class GraphedCallable:
    """``fn(*tensors) -> tuple of tensors`` replayed from a CUDA graph captured per input signature."""

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], warmup_calls: int = 2, max_graphs: int = 4):
        self.fn = fn
        self.warmup_calls = warmup_calls
        self.max_graphs = max_graphs
        self.graphs: dict[Signature, _Captured] = {}

    @staticmethod
    def signature(tensors: Sequence[torch.Tensor]) -> Signature:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)

    def capture(self, *tensors: torch.Tensor) -> None:
        """Warms ``fn`` up on these inputs' shapes (compiling it, where it compiles), then captures it."""
        key = self.signature(tensors)
        if key in self.graphs or len(self.graphs) >= self.max_graphs:
            return
        static = tuple(t.detach().clone() for t in tensors)
        # Warm-up on a side stream, as torch.cuda.graphs asks: lazy initialisation and cuDNN's and
        # Inductor's tuning happen here, outside the capture.
        stream = torch.cuda.Stream(static[0].device)
        stream.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_calls):
                self.fn(*static)
        torch.cuda.current_stream(static[0].device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = tuple(self.fn(*static))
        self.graphs[key] = _Captured(graph, static, outputs)

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured = self.graphs.get(self.signature(tensors))
        if captured is None:
            return tuple(self.fn(*tensors))
        for buffer, tensor in zip(captured.inputs, tensors):
            buffer.copy_(tensor)
        captured.graph.replay()
        return tuple(output.clone() for output in captured.outputs)


def run_graphed(fn: Callable[..., Sequence[torch.Tensor]], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn(*tensors)``; where ``fn`` is a GraphedCallable, the first call at a signature captures it."""
    if isinstance(fn, GraphedCallable):
        fn.capture(*tensors)
    return tuple(fn(*tensors))
