"""Random inputs of a model at given sizes, shaped by its contract: warm-up, export tracing, tests, benchmarks."""

from __future__ import annotations

from typing import Mapping

import torch

from openspeedy.contracts import PROMPT_TOKENS, UNET_CFG_SHARED_INPUTS, ModelContract

_TORCH_DTYPES = {"FP32": torch.float32, "INT64": torch.int64, "INT32": torch.int32, "UINT8": torch.uint8}

# The UNet's integer inputs: a late timestep, and the reference pipeline's fps conditioning.
UNET_VALUES = {"TIMESTEP": 999, "FPS": 16}


def example_inputs(
    contract: ModelContract,
    sizes: Mapping[str, int],
    values: Mapping[str, int] = UNET_VALUES,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One tensor per input of ``contract``: named axes take their size from ``sizes``, fixed ones the
    contract's. Float inputs are standard normal (from ``generator`` if given), integer inputs hold
    ``values[name]``. Optional inputs are left out: they switch features on, not part of a plain call."""
    inputs = {}
    for spec in contract.inputs:
        if spec.optional:
            continue
        missing = [axis for axis in spec.axes if isinstance(axis, str) and axis not in sizes]
        if missing:
            raise ValueError(f"{contract.name}: {spec.name} needs a size for its axis {missing[0]!r}")
        shape = tuple(sizes[axis] if isinstance(axis, str) else axis for axis in spec.axes)
        dtype = _TORCH_DTYPES[spec.datatype]
        if dtype.is_floating_point:
            inputs[spec.name] = torch.randn(shape, generator=generator, device=device)
        else:
            if spec.name not in values:
                raise ValueError(f"{contract.name}: {spec.name} is an integer input, give its value in values")
            inputs[spec.name] = torch.full(shape, values[spec.name], dtype=dtype, device=device)
    return inputs


def unet_sizes(config, frames: int, height: int, width: int, batch: int = 2,
               tokens: int = PROMPT_TOKENS) -> dict[str, int]:
    """The UNet contract's axis sizes for a diffusers UNet ``config`` and a latent video size
    (``height`` and ``width`` in latent pixels); ``batch`` 2 is one classifier-free-guidance call."""
    return {"batch": batch, "channels": config.in_channels, "frames": frames, "height": height, "width": width,
            "tokens": tokens, "features": config.cross_attention_dim, "image_tokens": 1}


def as_cfg_pair(unet_inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNet inputs of two rows made a classifier-free-guidance call like the pipeline's: the rows share
    the sample, fps and image latents (the first row's) and keep their own embeddings."""
    return dict(unet_inputs) | {name: torch.cat([unet_inputs[name][:1]] * 2) for name in UNET_CFG_SHARED_INPUTS}
