"""The ONNX UNet: exact pooling rewrite, graph checks, onnxruntime against PyTorch, served end to end."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from tritonclient.grpc import model_config_pb2

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs, unet_sizes
from openspeedy.export.adaptive_pool import MatmulAdaptiveAvgPool2d, matmul_pooling
from openspeedy.export.onnx_unet import export_unet
from openspeedy.unet.onnxruntime_runtime import OnnxRuntimeUNet
from tests.helpers import assert_agrees, parse

U = 2.0**-24  # unit roundoff of FP32

# Latent sizes around the pooling's 32: smaller, equal, larger, multiples and not, and the
# published default 704x1280 (88x160).
POOL_SIZES = [1, 2, 3, 5, 7, 8, 13, 16, 31, 32, 33, 40, 45, 63, 64, 88, 100, 160]


def windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows, computed independently of the code under test."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


@pytest.mark.parametrize("height", POOL_SIZES)
def test_matmul_pooling_is_bit_exact_where_window_sums_are_exact(height):
    # Integer inputs make every window sum exact in FP32 whatever the order of the additions; then
    # both compute sum / window_height / window_width, so the results must be identical bit for bit.
    generator = torch.Generator().manual_seed(height)
    original, rewrite = torch.nn.AdaptiveAvgPool2d((32, 32)), MatmulAdaptiveAvgPool2d((32, 32))
    for width in POOL_SIZES:
        x = torch.randint(-1000, 1000, (2, 3, height, width), generator=generator).float()
        assert torch.equal(rewrite(x), original(x)), (height, width)


@pytest.mark.parametrize("height", POOL_SIZES)
def test_matmul_pooling_differs_only_by_summation_order(height):
    # General inputs: the two sum a window of n = kh * kw values in different orders. Each order is
    # within (n - 1) u sum|x| of the exact sum (the rewrite adds kh then kw terms: (kh - 1) + (kw - 1) u
    # more); the two divisions add at most 2 u |result| each. So per element
    #   |rewrite - original| <= (2n + kh + kw) u mean|x| over the window,
    # and a wrong window (off by one row or column) breaks it by orders of magnitude.
    generator = torch.Generator().manual_seed(1000 + height)
    original, rewrite = torch.nn.AdaptiveAvgPool2d((32, 32)), MatmulAdaptiveAvgPool2d((32, 32))
    for width in POOL_SIZES:
        x = torch.randn(2, 3, height, width, generator=generator) * 10
        kh = torch.tensor([e - s for s, e in windows(height, 32)], dtype=torch.float64)[:, None]
        kw = torch.tensor([e - s for s, e in windows(width, 32)], dtype=torch.float64)[None, :]
        mean_abs = torch.nn.AdaptiveAvgPool2d((32, 32))(x.double().abs())
        bound = (2 * kh * kw + kh + kw) * U * mean_abs
        difference = (rewrite(x).double() - original(x).double()).abs()
        assert (difference <= bound).all(), (height, width, (difference / bound).max().item())


def test_matmul_pooling_refuses_an_open_output_size():
    with pytest.raises(ValueError):
        MatmulAdaptiveAvgPool2d((32, None))


@pytest.fixture(scope="module")
def torch_unet(tiny_checkpoint):
    return load_component("unet", tiny_checkpoint)


def test_pooling_swap_is_only_for_the_export(torch_unet):
    embedder = torch_unet.model.image_latents_context_embedding
    original = embedder[2]
    assert isinstance(original, torch.nn.AdaptiveAvgPool2d)
    with matmul_pooling(torch_unet.model):
        assert isinstance(embedder[2], MatmulAdaptiveAvgPool2d)
    assert embedder[2] is original


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_unet(tiny_checkpoint / "unet", tmp_path_factory.mktemp("onnx_unet") / "model.onnx")


def test_graph_passes_the_onnx_checker(exported):
    onnx.checker.check_model(str(exported), full_check=True)  # full_check: shape inference too
    assert exported.with_name("model.onnx.data").stat().st_size > 0  # weights as external data


ONNX_TYPES = {"FP32": onnx.TensorProto.FLOAT, "INT64": onnx.TensorProto.INT64}


def test_graph_signature_is_the_contract(exported, torch_unet):
    graph = onnx.load(str(exported), load_external_data=False).graph
    config = torch_unet.model.config
    static = {"SAMPLE": {1: config.in_channels}, "IMAGE_LATENTS": {1: config.in_channels},
              "ENCODER_HIDDEN_STATES": {2: config.cross_attention_dim},
              "IMAGE_EMBEDDINGS": {1: 1, 2: config.cross_attention_dim}, "TIMESTEP": {0: 1},
              "NOISE_PRED": {1: config.out_channels}, "FPS": {}}
    unet = contracts.UNET_EXPORTED
    for values, specs in ((graph.input, unet.inputs), (graph.output, unet.outputs)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs):
            tensor_type = value.type.tensor_type
            assert tensor_type.elem_type == ONNX_TYPES[spec.datatype], spec.name
            dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
            assert len(dims) == len(spec.dims), spec.name
            expected = [spec.varying_axes.get(i, static[spec.name].get(i)) for i in range(len(dims))]
            if spec.name == "NOISE_PRED" and isinstance(dims[1], str):
                # The tracer leaves the output's channel dimension unnamed-symbolic (it comes out of a
                # reshape); runtimes infer it, and test_onnxruntime_matches_pytorch checks its value.
                expected[1] = dims[1]
            assert dims == expected, spec.name


def test_graph_has_no_fixed_size_pooling(exported):
    ops = {node.op_type for node in onnx.load(str(exported), load_external_data=False).graph.node}
    assert not ops & {"AveragePool", "GlobalAveragePool", "MaxPool"}, ops
    assert "Resize" in ops  # upsampling to the skip connections' sizes, traced from shapes


# (batch, frames, latent height, latent width): inside the tiny profile (32..512 px, up to 32 frames),
# with sizes below, at and above the pooling's 32, multiples of the upsampling factor 8 and not.
SHAPES = [(1, 1, 4, 4), (2, 2, 5, 12), (2, 8, 8, 8), (1, 16, 12, 5), (2, 3, 16, 24), (2, 32, 4, 8),
          (1, 4, 33, 40), (2, 2, 64, 64)]


@pytest.fixture(scope="module")
def onnx_unet(exported):
    return OnnxRuntimeUNet(exported.parent, torch.device("cpu"), torch.float32, {})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_pytorch(torch_unet, onnx_unet, shape):
    batch, frames, height, width = shape
    sizes = unet_sizes(torch_unet.model.config, frames, height, width, batch)
    inputs = example_inputs(contracts.UNET_EXPORTED, sizes, generator=torch.Generator().manual_seed(sum(shape)))
    inputs["TIMESTEP"] = torch.tensor([977])
    expected = torch_unet.infer(inputs)["NOISE_PRED"]
    got = onnx_unet.infer(inputs)["NOISE_PRED"]
    assert got.shape == expected.shape == (batch, 4, frames, height, width)
    assert got.dtype == torch.float32
    relative = ((got - expected).abs().max() / expected.abs().max()).item()
    assert relative < 1e-4, relative


def test_runtime_parameter_selects_the_class(exported, tiny_checkpoint):
    assert isinstance(load_component("unet", exported.parent, options={"runtime": "onnxruntime"}), OnnxRuntimeUNet)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_component("unet", tiny_checkpoint, options={"runtime": "tensorrt"})


def test_onnxruntime_without_a_graph_is_refused(tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="--unet-runtime onnxruntime"):
        load_component("unet", tiny_checkpoint, options={"runtime": "onnxruntime"})


def test_onnxruntime_repository_layout_and_config(onnxruntime_repository):
    version = onnxruntime_repository / "unet" / "1"
    # __pycache__: the served tests (same session repository) may have had Triton import model.py already
    files = sorted(p.name for p in version.iterdir() if p.name != "__pycache__")
    assert files == ["model.onnx", "model.onnx.data", "model.py"]
    config = parse(onnxruntime_repository / "unet" / "config.pbtxt")
    assert_agrees(config, contracts.UNET_EXPORTED)
    assert config.backend == "python"
    assert config.parameters["runtime"].string_value == "onnxruntime"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    for contract in contracts.ALL_MODELS:  # the other models are untouched; the unet serves the exported tensors
        contract = contracts.UNET_EXPORTED if contract is contracts.UNET else contract
        assert_agrees(parse(onnxruntime_repository / contract.name / "config.pbtxt"), contract)


def test_export_cli_switches_the_unet_runtime(tmp_path):
    from openspeedy.export.__main__ import main

    version = tmp_path / "models" / "unet" / "1"
    main(["--tiny", "--output", str(tmp_path / "models")])
    assert (version / "unet").is_dir() and not (version / "model.onnx").exists()
    main(["--tiny", "--output", str(tmp_path / "models"), "--unet-runtime", "onnxruntime"])
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data", "model.py"]
    assert parse(tmp_path / "models" / "unet" / "config.pbtxt").parameters["runtime"].string_value == "onnxruntime"
    main(["--tiny", "--output", str(tmp_path / "models"), "--unet-runtime", "torch"])  # and back: nothing stale
    assert sorted(p.name for p in version.iterdir()) == ["model.py", "unet"]
    assert "runtime" not in parse(tmp_path / "models" / "unet" / "config.pbtxt").parameters
