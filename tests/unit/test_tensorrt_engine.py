"""The TensorRT path: profile, trtexec command and tensorrt_plan config without TensorRT; the engine build with it."""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from openspeedy import contracts
from openspeedy.export.onnx_unet import export_unet
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository, model_configs
from openspeedy.export.tensorrt_engine import (
    UNetProfile,
    build_engine,
    graph_dims,
    profile_shapes,
    require_modelopt,
    require_tensorrt,
    tensorrt_config,
    trtexec_command,
)
from openspeedy.model_config import InstanceGroup
from openspeedy.request import RequestSettings
from tests.helpers import assert_agrees, parse

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not importable here (it is not installable "
                                    "on these machines): engines are built in the NGC Triton container")
without_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here")

# The tiny model's profile: 32..512 px, up to 32 frames (TINY_SETTINGS).
TINY_PROFILE = UNetProfile.covering(TINY_SETTINGS)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_unet(tiny_checkpoint / "unet", tmp_path_factory.mktemp("trt_onnx") / "model.onnx")


@pytest.mark.parametrize("bad", [dict(frames=(2, 1, 4)), dict(batch=(0, 1, 2)), dict(height=(60, 64, 64)),
                                 dict(width=(64, 128, 96))])
def test_profile_refuses_bad_ranges(bad):
    with pytest.raises(ValueError):
        UNetProfile(**bad)


def test_profile_ranges_are_latent_sizes():
    ranges = UNetProfile().dimension_ranges()
    assert ranges == {"batch": (1, 2, 2), "frames": (1, 16, 32), "height": (8, 88, 160), "width": (8, 160, 160),
                      "tokens": (77, 77, 77)}


def test_profile_shapes_from_the_exported_graph(exported):
    shapes = profile_shapes(graph_dims(exported), UNetProfile())
    # not TIMESTEP
    assert set(shapes) == {"SAMPLE", "ENCODER_HIDDEN_STATES", "FPS", "IMAGE_LATENTS", "IMAGE_EMBEDDINGS"}
    assert shapes["SAMPLE"] == ((1, 4, 1, 8, 8), (2, 4, 16, 88, 160), (2, 4, 32, 160, 160))
    assert shapes["IMAGE_LATENTS"] == shapes["SAMPLE"]
    assert shapes["ENCODER_HIDDEN_STATES"] == ((1, 77, 16), (2, 77, 16), (2, 77, 16))
    assert shapes["FPS"] == ((1,), (2,), (2,))
    assert shapes["IMAGE_EMBEDDINGS"] == ((1, 1, 16), (2, 1, 16), (2, 1, 16))


def test_profile_shapes_refuse_an_unknown_dimension():
    with pytest.raises(ValueError, match="'channels'"):
        profile_shapes({"SAMPLE": ["batch", "channels"]}, UNetProfile())


def test_trtexec_command_has_the_same_profile(exported, tmp_path):
    words = shlex.split(trtexec_command(exported, tmp_path / "model.plan", graph_dims(exported), TINY_PROFILE))
    assert words[:4] == ["trtexec", f"--onnx={exported}", f"--saveEngine={tmp_path / 'model.plan'}", "--fp16"]
    flags = dict(word.split("=", 1) for word in words[4:])
    assert flags["--minShapes"].split(",")[0] == "SAMPLE:1x4x1x4x4"
    assert flags["--optShapes"].split(",")[0] == "SAMPLE:2x4x8x8x8"
    assert flags["--maxShapes"].split(",")[0] == "SAMPLE:2x4x32x64x64"
    assert "TIMESTEP" not in flags["--maxShapes"]
    assert "--fp8" in trtexec_command(exported, tmp_path / "p", graph_dims(exported), TINY_PROFILE, "fp8")
    with pytest.raises(ValueError):
        trtexec_command(exported, tmp_path / "p", graph_dims(exported), TINY_PROFILE, "int8")


def test_tensorrt_config_agrees_with_the_contract(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(tensorrt_config(InstanceGroup("KIND_GPU", 2, (0,))))
    config = parse(path)
    assert_agrees(config, contracts.UNET_EXPORTED)
    assert config.platform == "tensorrt_plan" and config.backend == ""
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert "runtime" not in config.parameters and "FORCE_CPU_ONLY_INPUT_TENSORS" not in config.parameters
    with pytest.raises(ValueError, match="GPU"):
        tensorrt_config(InstanceGroup("KIND_CPU"))


def test_tensorrt_export_configs(tmp_path):
    options = ExportOptions(device="gpu", unet_runtime="tensorrt", settings=RequestSettings())
    configs = model_configs(options, 0.18125)
    for contract in contracts.ALL_MODELS:
        contract = contracts.UNET_EXPORTED if contract is contracts.UNET else contract  # the engine's tensors
        path = tmp_path / f"{contract.name}.pbtxt"
        path.write_text(configs[contract.name])
        assert_agrees(parse(path), contract)
    assert parse(tmp_path / "unet.pbtxt").platform == "tensorrt_plan"
    # The entry models admit only what the engine serves, so a request outside it fails validation.
    entry = parse(tmp_path / "i2vgen_xl.pbtxt").parameters
    assert entry["max_size"].string_value == "1280" and entry["max_num_frames"].string_value == "32"
    assert entry["default_height"].string_value == "704" and entry["default_width"].string_value == "1280"
    with pytest.raises(ValueError, match="GPU"):
        model_configs(dataclasses.replace(options, device="cpu"), 0.18125)
    with pytest.raises(ValueError, match="unet_runtime"):
        model_configs(dataclasses.replace(options, unet_runtime="tvm"), 0.18125)


def test_restrict_narrows_the_request_limits():
    narrowed = UNetProfile(frames=(1, 8, 16), height=(128, 256, 512), width=(64, 256, 768)).restrict(RequestSettings())
    assert (narrowed.min_size, narrowed.max_size, narrowed.max_num_frames) == (128, 512, 16)
    assert (narrowed.default_height, narrowed.default_width, narrowed.default_num_frames) == (512, 512, 16)
    with pytest.raises(ValueError):
        UNetProfile(height=(64, 64, 64), width=(64, 64, 64)).restrict(RequestSettings(min_size=128))


@without_tensorrt
def test_engine_build_refuses_clearly_without_tensorrt(exported, tmp_path):
    with pytest.raises(RuntimeError, match="TensorRT is not importable.*nvcr.io/nvidia/tritonserver"):
        require_tensorrt()
    with pytest.raises(RuntimeError, match="TensorRT is not importable"):
        build_engine(exported, tmp_path / "model.plan", TINY_PROFILE)
    assert not (tmp_path / "model.plan").exists()


@without_tensorrt
def test_tensorrt_repository_refuses_clearly_without_tensorrt(tiny_checkpoint, tmp_path):
    options = ExportOptions(device="gpu", unet_runtime="tensorrt", settings=TINY_SETTINGS, unet_profile=TINY_PROFILE)
    with pytest.raises(RuntimeError, match="TensorRT is not importable"):
        build_repository(tiny_checkpoint, tmp_path / "models", options)
    from openspeedy.export.__main__ import main

    with pytest.raises(RuntimeError, match="TensorRT is not importable"):
        main(["--tiny", "--output", str(tmp_path / "cli"), "--device", "gpu", "--unet-runtime", "tensorrt"])
    assert not (tmp_path / "cli").exists()  # refused before any work


def test_fp8_needs_modelopt_and_a_quantized_graph(exported, tmp_path):
    if importlib.util.find_spec("modelopt") is None:
        with pytest.raises(RuntimeError, match="ModelOpt"):
            require_modelopt()
    with pytest.raises(ValueError, match="no quantizers"):
        build_engine(exported, tmp_path / "model.plan", TINY_PROFILE, precision="fp8")


@needs_tensorrt
def test_engine_has_the_contract_tensors_and_the_profile(exported, tmp_path):
    trt = require_tensorrt()
    plan = build_engine(exported, tmp_path / "model.plan", TINY_PROFILE)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == [*contracts.UNET_EXPORTED.input_names, *contracts.UNET_EXPORTED.output_names]
    dtypes = {"FP32": trt.float32, "INT64": trt.int64}
    for spec in (*contracts.UNET_EXPORTED.inputs, *contracts.UNET_EXPORTED.outputs):
        assert engine.get_tensor_dtype(spec.name) == dtypes[spec.datatype]
        assert len(engine.get_tensor_shape(spec.name)) == len(spec.dims)
    low, opt, high = engine.get_tensor_profile_shape("SAMPLE", 0)
    assert (tuple(low), tuple(opt), tuple(high)) == profile_shapes(graph_dims(exported), TINY_PROFILE)["SAMPLE"]
