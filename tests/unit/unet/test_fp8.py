"""FP8 linear layers (openspeedy/unet/fp8.py): lossy, so where the GPU has no FP8 products the option is an
error, never silently off; on a GPU that has them the prediction stays near float16's."""

import pytest
import torch

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.unet.fp8 import Fp8Linear, fp8_supported
from openspeedy.unet.options import FP8, UNetOptions


def test_fp8_on_a_cpu_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="fp8 needs a CUDA GPU"):
        load_component("unet", tiny_checkpoint, options={"fp8": "true"})


@pytest.mark.gpu
def test_fp8_linears_keep_the_prediction_near_half_precision(tiny_checkpoint):
    if not fp8_supported(torch.device("cuda")):
        pytest.skip(f"{torch.cuda.get_device_name()} has no FP8 matrix products (compute capability < 8.9)")
    eager_fp8 = FP8.without("compile_mode")
    plain = load_component("unet", tiny_checkpoint, "cuda", "float16", UNetOptions(fuse_qkv=True).as_parameters())
    fp8 = load_component("unet", tiny_checkpoint, "cuda", "float16", eager_fp8.as_parameters())
    assert any(isinstance(m, Fp8Linear) for m in fp8.model.modules())
    inputs = example_inputs(contracts.UNET, plain.sizes(frames=4, height=64, width=64), device="cuda")
    expected, out = plain.infer(inputs)["NOISE_PRED"], fp8.infer(inputs)["NOISE_PRED"]
    assert float((out - expected).norm() / expected.norm()) < 0.1  # e4m3: 3 mantissa bits
