"""FP8 linear layers (openspeedy/unet/fp8.py) and the fp8 preset: `fast` with torchao's row-wise FP8 linears
in place of the fused GEGLU, never a default; where FP8 cannot run the reason is reported (the load itself is
in test_recipe.py); the layers torchao is handed, and how (torchao's float8 products refuse CPUs, so a fake
torchao stands in for it here); bfloat16 for the `unet` model in the export's config. On a GPU of compute
capability 8.9+, the prediction stays near bfloat16's."""

import builtins
import dataclasses
import sys
import types

import pytest
import torch
from torch import nn

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.export.__main__ import main as export_main
from openspeedy.unet import fp8
from openspeedy.unet.options import EAGER, FAST, FP8, UNetOptions, parse
from tests.helpers import parse as parse_config


def test_the_fp8_preset_is_fast_with_fp8_linears_in_place_of_the_fused_geglu():
    assert FP8 == dataclasses.replace(FAST, fused_geglu=False, fp8=True)
    assert parse("fp8") == FP8 and FP8.spelling() == "fp8"
    assert not FAST.fp8 and not EAGER.fp8  # lossy: no other preset turns it on


def test_fp8_has_an_off_switch():
    off = parse("fp8,-fp8")
    assert not off.fp8 and off == FAST.without("fused_geglu")
    assert parse("fp8,-fp8,+fused_geglu") == FAST


@pytest.mark.parametrize("spelling", ["fast,+fp8", "fp8,+fused_geglu"])
def test_fp8_and_the_fused_geglu_exclude_each_other(spelling):
    with pytest.raises(ValueError, match="fp8 excludes fused_geglu: both change the same layers"):
        parse(spelling)


def test_the_unet_runs_in_bfloat16_where_fp8_is_on():
    assert fp8.unet_dtype(FP8, "float16") == "bfloat16"
    assert fp8.unet_dtype(FAST, "float16") == "float16"
    assert fp8.unet_dtype(FP8, "float32") == "float32"  # a CPU export: FP8 is skipped there


def test_export_with_unet_options_fp8_writes_them_into_the_unet_config(tmp_path):
    export_main(["--tiny", "--output", str(tmp_path / "repository"), "--unet-options", "fp8"])
    parameters = {key: value.string_value for key, value in
                  parse_config(tmp_path / "repository" / "unet" / "config.pbtxt").parameters.items()}
    assert UNetOptions.from_parameters(parameters) == FP8
    assert parameters["fp8"] == "true" and "fused_geglu" not in parameters
    assert parameters["dtype"] == "float32"  # a CPU export; bfloat16 in place of float16 on GPUs (above)


def fake_gpu(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")


class FakeTorchao:
    """torchao.quantization's three names: records the config and marks the layers ``filter_fn`` picks."""

    def __init__(self):
        self.configs, self.quantized = [], []
        outer = self

        class PerRow:
            pass

        class Float8DynamicActivationFloat8WeightConfig:
            def __init__(self, **kwargs):
                outer.configs.append(kwargs)

        def quantize_(model, config, filter_fn):
            for name, module in model.named_modules():
                if filter_fn(module, name):
                    outer.quantized.append(name)
                    module.quantized = True

        self.module = types.ModuleType("torchao.quantization")
        self.module.PerRow = PerRow
        self.module.Float8DynamicActivationFloat8WeightConfig = Float8DynamicActivationFloat8WeightConfig
        self.module.quantize_ = quantize_

    def install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
        monkeypatch.setitem(sys.modules, "torchao.quantization", self.module)


def test_fp8_names_what_it_lacks(monkeypatch):
    cpu = fp8.fp8_unavailable(torch.device("cpu"), torch.bfloat16)
    assert cpu == "FP8 needs compute capability 8.9+ (a CUDA GPU: Ada, Hopper or newer), this UNet runs on cpu"
    fake_gpu(monkeypatch, (8, 0))
    assert fp8.fp8_unavailable(torch.device("cuda"), torch.bfloat16) == (
        "FP8 needs compute capability 8.9+, Some GPU has 8.0")

    fake_gpu(monkeypatch, (9, 0))
    real_import = builtins.__import__

    def torchao_missing(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "__import__", torchao_missing)
        assert fp8.fp8_unavailable(torch.device("cuda"), torch.bfloat16) == (
            "torchao is not installed; pip install 'openspeedy[fp8]'")

    FakeTorchao().install(monkeypatch)
    assert fp8.fp8_unavailable(torch.device("cuda"), torch.float16) == (
        "torchao's row-wise FP8 takes bfloat16 weights, this UNet is float16")
    assert fp8.fp8_unavailable(torch.device("cuda"), torch.bfloat16) is None


def test_torchao_gets_every_linear_layer_the_fp8_kernels_take_with_row_wise_scales(monkeypatch, diffusers_unet):
    fake = FakeTorchao()
    fake.install(monkeypatch)
    model = nn.ModuleDict({"unet": diffusers_unet, "odd": nn.Linear(20, 32), "conv": nn.Conv2d(16, 16, 1)})
    fits = [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0]
    assert fits and len(fits) < sum(isinstance(module, nn.Linear) for module in model.modules())
    try:
        assert fp8.quantize_linears(model) == len(fits)
        assert fake.quantized == fits  # the 20-wide layer and the convolution stay
        (config,) = fake.configs
        assert isinstance(config["granularity"], fake.module.PerRow)
        assert config["set_inductor_config"] is False  # Inductor's global settings stay the process's own
    finally:
        for module in diffusers_unet.modules():
            module.__dict__.pop("quantized", None)


@pytest.mark.gpu
def test_fp8_linears_keep_the_prediction_near_bfloat16(tiny_checkpoint):
    reason = fp8.fp8_unavailable(torch.device("cuda"), torch.bfloat16) if torch.cuda.is_available() else "no GPU"
    if reason is not None:
        pytest.skip(reason)
    eager_fp8 = FP8.without("compile_mode")
    plain = load_component("unet", tiny_checkpoint, "cuda", "bfloat16", eager_fp8.without("fp8").as_parameters())
    quantized = load_component("unet", tiny_checkpoint, "cuda", "bfloat16", eager_fp8.as_parameters())
    assert any(line.startswith("fp8: applied (") for line in quantized.recipe_report)
    inputs = example_inputs(contracts.UNET, plain.sizes(frames=4, height=64, width=64), device="cuda")
    expected, out = plain.infer(inputs)["NOISE_PRED"], quantized.infer(inputs)["NOISE_PRED"]
    assert float((out - expected).norm() / expected.norm()) < 0.1  # e4m3: 3 mantissa bits
