"""Exports `I2VGenXLUNet` to ONNX under the `unet` contract: the graph onnxruntime serves and TensorRT builds.

Exporter: the legacy TorchScript one (``dynamo=False``). It records the shape arithmetic of the
diffusers code (reshapes by batch and frames, upsample sizes) as graph ops, so one graph serves every
batch, frame count and latent size, and it needs nothing beyond torch and onnx. The dynamo exporter
needs onnxscript, which the lock does not carry, and failed on this model with ``dynamic_axes``
(docs/models.md); nothing here needs what it adds.

Two details make the traced graph general:
- ``nn.AdaptiveAvgPool2d`` in the image-latents context embedder is swapped for an equivalent made of
  matrix products while tracing (openspeedy/export/adaptive_pool.py); the served PyTorch model is untouched.
- The UNet passes each skip connection's size to its upsampler only when the latent size is not a
  multiple of ``2 ** num_upsamplers``; otherwise it upsamples by a fixed factor of 2. Tracing at a
  size that is not a multiple records the size-forwarding branch, which is also exact for multiples
  (nearest upsampling to twice the size is the factor-2 upsampling), so the graph serves every size.

The weights go to one external data file beside the graph (``model.onnx.data``): the full-size UNet
is 5.7 GB in FP32, over protobuf's 2 GB limit, and one layout for every size keeps one code path.
"""

from __future__ import annotations

import gc
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from diffusers import I2VGenXLUNet
from torch import nn

from openspeedy import contracts
from openspeedy.example_inputs import example_inputs, unet_sizes
from openspeedy.export.adaptive_pool import matmul_pooling

OPSET = 17  # LayerNormalization is native from 17; TensorRT 10 parses opsets up to 20
EXTERNAL_DATA_SUFFIX = ".data"

# The graph's dynamic axes are the contract's varying axes (batch, frames, latent height and width,
# tokens), named as there; the TensorRT profiles set a min/opt/max per name
# (openspeedy/export/tensorrt_engine.py). Axes the weights fix (channels, embedding widths) stay static
# in the graph; the Triton config keeps -1 for them, which the TensorRT and onnxruntime backends accept
# against a static dimension.
def dynamic_axes(contract: contracts.ModelContract = contracts.UNET_EXPORTED) -> dict[str, dict[int, str]]:
    """``torch.onnx.export``'s dynamic_axes: each tensor's varying axes, by position, named as in the contract."""
    return {spec.name: spec.varying_axes for spec in (*contract.inputs, *contract.outputs) if spec.varying_axes}


class ContractUNet(nn.Module):
    """The UNet with the contract's inputs, in the contract's order, as positional arguments."""

    def __init__(self, unet: I2VGenXLUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return self.unet(
            sample,
            timestep,
            fps=fps,
            image_latents=image_latents,
            image_embeddings=image_embeddings,
            encoder_hidden_states=encoder_hidden_states,
            return_dict=False,
        )[0]


def tracing_inputs(unet: I2VGenXLUNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """Contract inputs at the tracing size: a latent size that is not a multiple of the upsampling
    factor (see the module docstring), small so that tracing the full-size model is quick."""
    factor = 2**unet.num_upsamplers
    sizes = unet_sizes(unet.config, frames=3, height=factor + 1, width=factor + 3)
    return example_inputs(contracts.UNET_EXPORTED, sizes, {"TIMESTEP": 501, "FPS": 16},
                          generator=torch.Generator().manual_seed(seed))


def trace_to_onnx(unet: I2VGenXLUNet, path: Path, opset: int = OPSET) -> Path:
    """Traces ``unet`` (FP32) into ``path``. Above 2 GB the exporter itself writes one file per weight
    next to it; ``consolidate`` turns any result into the served layout."""
    unet = unet.float().eval()
    wrapper = ContractUNet(unet).eval()
    inputs = tracing_inputs(unet)
    with matmul_pooling(unet), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns at every Python-level shape comparison in diffusers; the tests check the
        # graph at many shapes instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(inputs[name] for name in contracts.UNET_EXPORTED.input_names),
            str(path),
            input_names=list(contracts.UNET_EXPORTED.input_names),
            output_names=list(contracts.UNET_EXPORTED.output_names),
            dynamic_axes=dynamic_axes(),
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def consolidate(raw: Path, path: Path) -> Path:
    """Writes the graph at ``raw`` (weights inline or in per-tensor files) as ``path`` plus one external
    data file ``path.name + '.data'`` beside it, and checks it with ``onnx.checker``."""
    model = onnx.load(str(raw), load_external_data=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    del model
    onnx.checker.check_model(str(path))  # by path: works past 2 GB
    return path


def export_unet(unet_directory: Path, path: Path) -> Path:
    """Exports the diffusers UNet folder ``unet_directory`` to ``path`` (+ ``path.name + '.data'``).

    The PyTorch model is released before the graph is re-saved, so the peak memory is about twice the
    FP32 weights, not three times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # same disk: the raw export is as big
        raw = Path(scratch) / "raw.onnx"
        unet = I2VGenXLUNet.from_pretrained(unet_directory, dtype=torch.float32)
        trace_to_onnx(unet, raw)
        del unet
        gc.collect()
        return consolidate(raw, path)

