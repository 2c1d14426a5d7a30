"""The fused GEGLU (openspeedy/unet/geglu.py): on a CPU it is diffusers' arithmetic, bit for bit; the tests
marked gpu run the Triton kernel against float32 arithmetic at the UNet's feed-forward shapes and at
shapes that do not fill its tiles."""

import pytest
import torch
from diffusers.models.activations import GEGLU

from bench.common import relative_l2
from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.unet.geglu import FusedGEGLU, geglu, reference_geglu, use_fused_geglu


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    unet = load_component("unet", tiny_checkpoint)
    return example_inputs(contracts.UNET, unet.sizes(frames=5, height=72, width=88),
                          generator=torch.Generator().manual_seed(0))


def test_unet_with_fused_geglu_is_diffusers_arithmetic_on_a_cpu(tiny_checkpoint, inputs):
    plain = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true"})
    fused = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true", "fused_geglu": "true"})
    assert not any(type(m) is GEGLU for m in fused.model.modules())
    assert sum(isinstance(m, FusedGEGLU) for m in fused.model.modules()) > 0
    assert fused.model.state_dict().keys() == plain.model.state_dict().keys()  # checkpoints load as before
    torch.testing.assert_close(fused.infer(inputs)["NOISE_PRED"], plain.infer(inputs)["NOISE_PRED"], rtol=0, atol=0)


def test_fused_geglu_replaces_only_diffusers_geglu():
    feed_forward = torch.nn.Sequential(GEGLU(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    assert use_fused_geglu(feed_forward) == 1
    assert isinstance(feed_forward[0], FusedGEGLU) and isinstance(feed_forward[1], torch.nn.GELU)
    x = torch.randn(3, 7, 32)
    expected = feed_forward[0].proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(feed_forward[0](x), expected[0] * torch.nn.functional.gelu(expected[1]), rtol=0, atol=0)


def test_op_traces_under_torch_compile():
    x, weight, bias = torch.randn(2, 5, 16), torch.randn(64, 16), torch.randn(64)
    compiled = torch.compile(lambda x: geglu(x, weight, bias) + 1, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), reference_geglu(x, weight, bias) + 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tokens, features_in, inner", [
    (131072, 320, 1280), (32768, 640, 2560), (8192, 1280, 5120), (2048, 1280, 5120),  # 16 x 512x512, CFG
    (300, 80, 48), (1, 16, 16), (4097, 320, 1296),  # tiles left part-filled in every dimension
])
def test_kernel_matches_float32_arithmetic(tokens, features_in, inner, bias, dtype):
    torch.manual_seed(0)
    x = torch.randn(tokens, features_in, device="cuda", dtype=dtype)
    linear = torch.nn.Linear(features_in, 2 * inner, bias=bias, device="cuda", dtype=dtype)
    b = linear.bias.detach() if bias else None
    with torch.inference_mode():
        expected = reference_geglu(x.float(), linear.weight.float(), None if b is None else b.float())
        rounded = reference_geglu(x, linear.weight, b)  # diffusers' own, rounding the projection first
        out = geglu(x, linear.weight, b)
    assert out.shape == (tokens, inner) and out.dtype == dtype
    # One rounding to the dtype where diffusers has two: no further from float32 than diffusers is.
    assert relative_l2(out, expected) <= max(relative_l2(rounded, expected), torch.finfo(dtype).eps / 4)


@pytest.mark.gpu
def test_kernel_keeps_the_leading_axes():
    x = torch.randn(4, 9, 64, device="cuda", dtype=torch.float16)[:, 1:]  # not contiguous in its rows
    weight = torch.randn(96, 64, device="cuda", dtype=torch.float16) / 8
    out = geglu(x, weight, None)
    assert out.shape == (4, 8, 48)
    torch.testing.assert_close(out, reference_geglu(x, weight, None), rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_half_precision_unet_keeps_its_noise_prediction(tiny_checkpoint):
    plain = load_component("unet", tiny_checkpoint, "cuda", "float16", {"fuse_qkv": "true"})
    fused = load_component("unet", tiny_checkpoint, "cuda", "float16", {"fuse_qkv": "true", "fused_geglu": "true"})
    inputs = example_inputs(contracts.UNET, plain.sizes(frames=4, height=64, width=64), device="cuda")
    expected, out = plain.infer(inputs)["NOISE_PRED"], fused.infer(inputs)["NOISE_PRED"]
    assert relative_l2(out, expected) < 5e-3
