"""The UNet's memory layout (openspeedy/unet/layout.py): temporal convolutions as 2D ones (the same
arithmetic), channels-last weights, and channels-last requirements at the joins and the temporal
convolutions' inputs, which the compiled graph keeps."""

import re

import pytest
import torch
from torch import nn

from openspeedy.components import load_component
from openspeedy.unet import staged_forward
from openspeedy.unet.layout import TemporalConvAs2d, channels_last, temporal_conv2d
from openspeedy.unet.options import UNetOptions
from tests.helpers import forward_arguments

LAYOUT = UNetOptions(temporal_conv2d=True, channels_last=True)


def test_temporal_conv2d_replaces_every_temporal_conv3d(tiny_checkpoint):
    unet = load_component("unet", tiny_checkpoint, options={"temporal_conv2d": "true"})
    assert not [m for m in unet.model.modules() if isinstance(m, nn.Conv3d)]
    assert [m for m in unet.model.modules() if isinstance(m, TemporalConvAs2d)]


def test_temporal_conv_as_2d_is_the_same_arithmetic():
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(2, 6, 7, 4, 3)
    torch.testing.assert_close(TemporalConvAs2d(conv)(x), conv(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv3d(4, 4, (3, 3, 3), padding=1),  # spatial too
        nn.Conv3d(4, 4, (3, 1, 1), stride=(2, 1, 1)),
        nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), padding_mode="circular"),
    ],
)
def test_only_plain_temporal_convs_convert(conv):
    with pytest.raises(ValueError, match="convert"):
        TemporalConvAs2d(conv)


def test_spatial_conv3d_is_left_alone():
    model = nn.Sequential(nn.Conv3d(4, 4, (3, 3, 3), padding=1), nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)))
    assert temporal_conv2d(model) == 1
    assert isinstance(model[0], nn.Conv3d) and isinstance(model[1], TemporalConvAs2d)


def test_channels_last_converts_the_4d_convolution_weights():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv3d(4, 4, (3, 1, 1)), nn.Linear(4, 4))
    temporal_conv2d(model)
    assert channels_last(model) == 2
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in model[:2])


def test_channels_last_temporal_convs_need_the_2d_convolutions(tiny_checkpoint):
    with pytest.raises(ValueError, match="channels_last_temporal_convs needs temporal_conv2d"):
        load_component("unet", tiny_checkpoint, options={"channels_last_temporal_convs": "true"})


def call_arguments(code: str, function: str) -> list[list[str]]:
    """The arguments, as written, of every call of ``function`` in generated Python code."""
    calls = []
    for match in re.finditer(re.escape(function) + r"\(", code):
        arguments, current, depth = [], "", 0
        for char in code[match.end():]:
            if depth == 0 and char in ",)":
                arguments.append(current.strip())
                current = ""
                if char == ")":
                    break
                continue
            depth += (char in "([") - (char in ")]")
            current += char
        calls.append(arguments)
    return calls


def up_block_resnets(model: nn.Module) -> list[nn.Module]:
    return [resnet for block in model.up_blocks for resnet in block.resnets]


def temporal_convs(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, TemporalConvAs2d)]


@pytest.mark.parametrize("option, wrapped", [("channels_last_joins", up_block_resnets),
                                             ("channels_last_temporal_convs", temporal_convs)])
def test_channels_last_inputs_are_layout_requirements_in_the_compiled_graph(tiny_checkpoint, cfg_inputs, monkeypatch,
                                                                             option, wrapped):
    """Each up block resnet's input (the path joined with a skip connection), and each temporal
    convolution's input, reaches Inductor with a channels-last requirement (torch 2.11 otherwise wrote
    them contiguous and transposed them: openspeedy/unet/layout.py), and the prediction stays.
    torch.compile's guards tell a UNet with the option from one without it (they do not look at forward
    hooks), so neither reuses the other's graph."""
    graphs, compile = [], torch.compile

    def recording(gm, _example_inputs):
        graphs.append(gm)
        return gm.forward

    # Static shapes as the component asks: left to torch, a function compiled at other sizes earlier in the
    # process (the staged forward, by other tests) compiles for dynamic ones.
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile(fn, backend=recording,
                                                                        dynamic=kwargs.get("dynamic")))
    plain = load_component("unet", tiny_checkpoint, options=LAYOUT.as_parameters())
    required_layout = load_component("unet", tiny_checkpoint, options=LAYOUT.as_parameters() | {
        option: "true", "compile_mode": "default", "share_cfg_rows": "true"})
    expected = plain.infer(cfg_inputs)["NOISE_PRED"]
    torch.testing.assert_close(required_layout.infer(cfg_inputs)["NOISE_PRED"], expected, rtol=1e-5, atol=1e-5)
    force = torch.ops.prims.inductor_force_stride_order

    def requirements(graph):
        return [node for node in graph.graph.nodes if node.target in (force, force.default)]

    (required,) = map(requirements, graphs)
    assert len(required) == len(wrapped(plain.eager_model)) > 0  # each wrapped module runs once in a forward
    for node in required:
        shape = node.args[0].meta["example_value"].shape
        memory_format = {4: torch.channels_last, 5: torch.channels_last_3d}[len(shape)]
        assert tuple(node.args[1]) == torch.empty(shape).contiguous(memory_format=memory_format).stride()

    staged = torch.compile(staged_forward.forward)  # the model as an argument: only the guards tell them apart
    with torch.no_grad():
        for unet in (plain, required_layout):
            staged(unet.eager_model, *forward_arguments(cfg_inputs))
    assert [len(requirements(graph)) for graph in graphs[1:]] == [0, len(required)]


@pytest.mark.slow
def test_fast_compiles_the_shared_pair_with_the_weights_as_loaded(tiny_checkpoint, cfg_inputs, monkeypatch):
    """`fast`'s compiled path on a CPU (CUDA graphs and the Triton kernel do not apply there):
    torch.compile traces the staged forward with one shared row and keeps the prediction. Its graph hands
    every convolution its weight as loaded: none is copied into channels-last in each call (layout
    optimisation forced on here, as Inductor turns it on for this UNet on a GPU)."""
    import torch._inductor.config
    from torch._inductor.utils import run_and_get_code

    from openspeedy.unet.options import FAST
    from tests.helpers import ConvInRows

    monkeypatch.setattr(torch._inductor.config, "force_layout_optimization", True)
    expected = load_component("unet", tiny_checkpoint).infer(cfg_inputs)["NOISE_PRED"]
    fast = load_component("unet", tiny_checkpoint, options=FAST.as_parameters())
    counted = ConvInRows(fast.eager_model)
    outputs, code = run_and_get_code(fast.infer, cfg_inputs)
    torch.testing.assert_close(outputs["NOISE_PRED"], expected, rtol=1e-4, atol=1e-4)
    assert counted.rows == [cfg_inputs["SAMPLE"].shape[2]]  # traced once, with the shared row

    convolutions = call_arguments("\n".join(code), "extern_kernels.convolution")
    modules = [m for m in fast.eager_model.modules() if isinstance(m, (nn.Conv2d, TemporalConvAs2d))]
    assert len(convolutions) == len(modules)  # each convolution of the forward, once
    copied = [arguments[1] for arguments in convolutions if not re.fullmatch(r"arg\d+_1", arguments[1])]
    assert copied == [], f"{len(copied)} of {len(convolutions)} convolution weights are converted in every call"
