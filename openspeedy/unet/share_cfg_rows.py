"""A CFG pair's shared layers computed once: the rows of a classifier-free guidance call carry the same
sample, fps and image latents (only the embeddings differ), so everything before the first
cross-attention computes the same values in both. The staged forward (openspeedy/unet/staged_forward.py)
takes those inputs with one row and the embeddings with the pair's; ``RowSharing`` decides, call by
call, whether the rows are equal and the one-row inputs may be sent.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from openspeedy import contracts
from openspeedy.unet import staged_forward

# The UNet's own inputs, in its contract's order; the contract's optional inputs steer feature reuse.
UNET_MODEL_INPUTS = contracts.UNET_EXPORTED.input_names
_SHARED_POSITIONS = tuple(UNET_MODEL_INPUTS.index(name) for name in contracts.UNET_CFG_SHARED_INPUTS)


def supported(unet) -> bool:
    """Whether the staged forward can run this architecture (the published one's first down block)."""
    return staged_forward.staged_first_block(unet)


def read_later(flag: torch.Tensor) -> Callable[[], bool]:
    """``bool(flag)``, read when the returned function is called. On CUDA the value is copied to pinned
    host memory now, in stream order, so the read waits for that copy alone and not for the work
    launched after it, as ``bool(flag)`` then would."""
    if flag.device.type != "cuda":
        value = bool(flag)
        return lambda: value
    host = torch.empty((), dtype=torch.bool, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> bool:
        copied.synchronize()
        return bool(host)

    return read


class RowSharing:
    """Runs a path on the UNet's inputs, with SAMPLE, FPS and IMAGE_LATENTS cut to one row where a CFG
    pair's two rows hold the same values in them (what the pipeline sends). Whether they do is a
    comparison on the device. After a call whose rows were shared, the next one launches the one-row
    forward before the comparison's answer is back, then reads it (and computes the pair in full where
    the rows differ): reading it first would leave the GPU idle at every step while the CPU copies the
    inputs in and launches the graph."""

    def __init__(self):
        self.last_rows_shared = False

    def __call__(self, run: Callable[..., tuple[torch.Tensor, ...]], args: Sequence[torch.Tensor],
                 *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if args[0].shape[0] != 2:
            return run(*args, *extra)
        one_row = [arg[:1] if i in _SHARED_POSITIONS else arg for i, arg in enumerate(args)]
        rows_equal = read_later(torch.stack([(args[i][0] == args[i][1]).all() for i in _SHARED_POSITIONS]).all())
        if self.last_rows_shared:
            outputs = run(*one_row, *extra)
            if rows_equal():
                return outputs
        self.last_rows_shared = rows_equal()
        return run(*(one_row if self.last_rows_shared else args), *extra)
