"""The unet contract is the one declaration of its tensors: the config's dims, the exported ONNX graph's
inputs and dynamic axes, the TensorRT profile and the example inputs all follow from its axes."""

from __future__ import annotations

import pytest
import torch

from openspeedy import contracts
from openspeedy.example_inputs import example_inputs, unet_sizes
from openspeedy.export.onnx_unet import export_unet
from openspeedy.export.tensorrt_engine import UNetProfile, add_profile_arguments, graph_dims, profile_shapes
from openspeedy.model_config import render_config
from tests.helpers import parse

UNET = contracts.UNET_EXPORTED  # the tensors exported graphs and engines carry (the torch runtime adds optional ones)


@pytest.fixture(scope="module")
def unet_config(tiny_checkpoint):
    from diffusers import I2VGenXLUNet
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(I2VGenXLUNet.load_config(tiny_checkpoint / "unet"))  # attribute access, as unet.config


@pytest.fixture(scope="module")
def model_sizes(unet_config) -> dict[str, int]:
    """Sizes of the axes the tiny model fixes (channels, embedding width, one image token)."""
    sizes = unet_sizes(unet_config, frames=1, height=1, width=1)
    return {axis: sizes[axis] for axis in contracts.FIXED_BY_MODEL}


@pytest.fixture(scope="module")
def graph(tiny_checkpoint, tmp_path_factory):
    path = export_unet(tiny_checkpoint / "unet", tmp_path_factory.mktemp("follows") / "model.onnx")
    return graph_dims(path)


@pytest.mark.parametrize("contract", contracts.ALL_MODELS, ids=lambda c: c.name)
def test_config_dims_are_the_axes_with_minus_one_for_every_named_one(contract, tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(render_config(contract))
    config = parse(path)
    for tensors, specs in ((config.input, contract.inputs), (config.output, contract.outputs)):
        assert [t.name for t in tensors] == [s.name for s in specs]
        for tensor, spec in zip(tensors, specs):
            assert list(tensor.dims) == [-1 if isinstance(axis, str) else axis for axis in spec.axes], spec.name


def test_onnx_inputs_and_dynamic_axes_follow_the_contract(graph, model_sizes):
    assert list(graph) == list(UNET.input_names)
    for spec in UNET.inputs:
        expected = [
            model_sizes[axis] if axis in contracts.FIXED_BY_MODEL else axis  # varying: the axis's name
            for axis in spec.axes
        ]
        assert graph[spec.name] == expected, spec.name


def test_tensorrt_profile_follows_the_contract(graph, model_sizes):
    profile = UNetProfile()
    ranges = profile.dimension_ranges()
    assert tuple(ranges) == UNET.varying_axes == ("batch", "frames", "height", "width", "tokens")
    assert ranges["tokens"] == (contracts.PROMPT_TOKENS,) * 3
    shapes = profile_shapes(graph, profile)
    for spec in UNET.inputs:
        if not spec.varying_axes:
            assert spec.name not in shapes
            continue
        expected = tuple(
            tuple(ranges[axis][which] if axis in ranges else model_sizes.get(axis, axis) for axis in spec.axes)
            for which in range(3)
        )
        assert shapes[spec.name] == expected, spec.name


def test_profile_options_are_the_contract_axes():
    import argparse

    parser = argparse.ArgumentParser()
    add_profile_arguments(parser)
    options = {a.dest for a in parser._actions if a.dest.startswith("profile_")}
    assert options == {f"profile_{axis}" for axis in UNET.varying_axes}


def test_example_inputs_are_shaped_by_the_contract(unet_config):
    sizes = unet_sizes(unet_config, frames=3, height=5, width=7, batch=1)
    inputs = example_inputs(UNET, sizes)
    assert list(inputs) == list(UNET.input_names)
    for spec in UNET.inputs:
        tensor = inputs[spec.name]
        assert tensor.shape == tuple(sizes[a] if isinstance(a, str) else a for a in spec.axes), spec.name
        assert tensor.dtype == {"FP32": torch.float32, "INT64": torch.int64}[spec.datatype]
        assert spec.shape_matches(tuple(tensor.shape))
    with pytest.raises(ValueError, match="SAMPLE needs a size for its axis 'frames'"):
        example_inputs(UNET, {k: v for k, v in sizes.items() if k != "frames"})
