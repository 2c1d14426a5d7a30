"""The GEGLU inside its matrix product (openspeedy/unet/fused_geglu.py). On a CPU the option leaves diffusers'
GEGLU in place and says why, and the paired weight layout is checked against diffusers' arithmetic; the
tests marked gpu run QuACK's kernel against float32 arithmetic at the UNet's feed-forward shapes, at
shapes that do not fill its tiles, inside torch.compile and a CUDA graph, and in a half-precision UNet."""

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU

from bench.common import relative_l2
from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.unet.fused_geglu import (
    PairedGEGLU,
    kernel_unavailable,
    pair_rows,
    paired_geglu,
    reference_geglu,
    use_fused_geglu,
)
from tests.helpers import needs_quack_kernel


def test_on_a_cpu_the_option_keeps_diffusers_geglu_and_says_why(tiny_checkpoint, inputs, caplog):
    plain = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true"})
    with caplog.at_level(logging.WARNING, logger="openspeedy.unet"):
        fused = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true", "fused_geglu": "true"})
    assert "fused_geglu: skipped: it runs on CUDA GPUs only; diffusers' GEGLU runs" in caplog.text
    assert any(type(m) is GEGLU for m in fused.model.modules())
    torch.testing.assert_close(fused.infer(inputs)["NOISE_PRED"], plain.infer(inputs)["NOISE_PRED"], rtol=0, atol=0)


def test_paired_rows_give_diffusers_arithmetic():
    original = GEGLU(32, 48)
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    original = original.double()
    paired = PairedGEGLU(original)
    torch.testing.assert_close(paired.weight[0::2], original.proj.weight[48:])  # gate rows first in each pair
    torch.testing.assert_close(paired.weight[1::2], original.proj.weight[:48])
    torch.testing.assert_close(paired(x), original(x), rtol=1e-12, atol=1e-12)


def test_geglu_without_bias_pairs_a_zero_bias():
    original = GEGLU(16, 16, bias=False)
    paired = PairedGEGLU(original)
    assert torch.count_nonzero(paired.bias) == 0
    x = torch.randn(2, 16)
    torch.testing.assert_close(paired(x), original(x), rtol=1e-5, atol=1e-6)


def test_op_traces_under_torch_compile():
    x, weight, bias = torch.randn(2, 5, 16), torch.randn(64, 16), torch.randn(64)
    compiled = torch.compile(lambda x: paired_geglu(x, pair_rows(weight), pair_rows(bias)) + 1, backend="aot_eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(x), reference_geglu(x, weight, bias) + 1, rtol=1e-5, atol=1e-5)


def test_flop_counter_counts_the_op_as_the_linear_it_replaces():
    """bench.unet_calls rates a UNet call by FlopCounterMode's count: the fused op must count as diffusers'
    projection does (and its reference arithmetic inside the op must not count a second time)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, weight, bias = torch.randn(3, 5, 16), torch.randn(64, 16), torch.randn(64)
    counts = []
    for fused in (False, True):
        with FlopCounterMode(display=False) as counter:
            if fused:
                paired_geglu(x, pair_rows(weight), pair_rows(bias))
            else:
                reference_geglu(x, weight, bias)
        counts.append(counter.get_total_flops())
    assert counts == [2 * 15 * 16 * 64] * 2


needs_kernel = needs_quack_kernel(kernel_unavailable, "the fused GEGLU kernel")


@pytest.mark.gpu
@needs_kernel
@pytest.mark.parametrize("tokens, features_in, inner, dtype", [
    *[(*shape, torch.float16) for shape in ((131072, 320, 1280), (32768, 640, 2560), (8192, 1280, 5120),
                                             (2048, 1280, 5120))],  # 16 x 512x512, CFG
    (32768, 640, 2560, torch.bfloat16),
    (300, 80, 48, torch.float16), (1, 16, 16, torch.float16), (4097, 320, 1296, torch.float16),  # part-filled tiles
])
def test_kernel_matches_float32_arithmetic(tokens, features_in, inner, dtype):
    torch.manual_seed(0)
    x = torch.randn(tokens, features_in, device="cuda", dtype=dtype)
    linear = torch.nn.Linear(features_in, 2 * inner, device="cuda", dtype=dtype)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    with torch.inference_mode():
        expected = reference_geglu(x.float(), weight.float(), bias.float())
        rounded = reference_geglu(x, weight, bias)  # diffusers' own, rounding the projection first
        out = paired_geglu(x, pair_rows(weight), pair_rows(bias))
    assert out.shape == (tokens, inner) and out.dtype == dtype
    # One rounding to the dtype where diffusers has two: no further from float32 than diffusers is.
    assert relative_l2(out, expected) <= max(relative_l2(rounded, expected), torch.finfo(dtype).eps / 4)


@pytest.mark.gpu
@needs_kernel
def test_kernel_gelu_is_the_exact_one_to_half_precision():
    """With the value half fixed at 1 and the gate half the identity, the kernel's output is its GELU of
    each float16 input: within one unit in the last place of the exact (float64) GELU, not the tanh
    approximation's up to 4.7e-4 off."""
    x = torch.linspace(-10, 10, 256 * 256, dtype=torch.float64).to(torch.float16).reshape(256, 256).cuda()
    weight = torch.cat([torch.zeros(256, 256), torch.eye(256)]).to("cuda", torch.float16)  # [value; gate]
    bias = torch.cat([torch.ones(256), torch.zeros(256)]).to("cuda", torch.float16)
    with torch.inference_mode():
        out = paired_geglu(x, pair_rows(weight), pair_rows(bias))
    exact = F.gelu(x.double()).to(torch.float16)
    # Below x = -5 the GELU is under 1.5e-6: float32's own 0.5 * x * (1 + erf(x / sqrt(2))) is off there
    # by as much as the absolute tolerance.
    torch.testing.assert_close(out, exact, rtol=2**-10, atol=5e-7)
    assert (out != exact).float().mean() < 0.05  # the rest are ties rounded the other way


@pytest.mark.gpu
@needs_kernel
def test_kernel_keeps_the_leading_axes_of_strided_input():
    x = torch.randn(4, 9, 64, device="cuda", dtype=torch.float16)[:, 1:]  # not contiguous in its rows
    weight = torch.randn(96, 64, device="cuda", dtype=torch.float16) / 8
    bias = torch.randn(96, device="cuda", dtype=torch.float16)
    out = paired_geglu(x, pair_rows(weight), pair_rows(bias))
    assert out.shape == (4, 8, 48)
    torch.testing.assert_close(out, reference_geglu(x, weight, bias), rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@needs_kernel
def test_kernel_replays_in_a_cuda_graph_under_torch_compile():
    torch.manual_seed(0)
    linear = torch.nn.Linear(640, 2 * 2560, device="cuda", dtype=torch.float16)
    weight, bias = pair_rows(linear.weight.detach()), pair_rows(linear.bias.detach())
    compiled = torch.compile(lambda x: paired_geglu(x * 2, weight, bias) + 1, dynamic=False)
    static = torch.randn(4096, 640, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        compiled(static)  # compiles and tunes outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = compiled(static)
        fresh = torch.randn_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.testing.assert_close(out, reference_geglu(fresh * 2, linear.weight, linear.bias) + 1, rtol=2e-3,
                                   atol=2e-3)


@pytest.mark.gpu
@needs_kernel
def test_half_precision_unet_keeps_its_noise_prediction(tiny_checkpoint):
    plain = load_component("unet", tiny_checkpoint, "cuda", "float16", {"fuse_qkv": "true"})
    fused = load_component("unet", tiny_checkpoint, "cuda", "float16", {"fuse_qkv": "true", "fused_geglu": "true"})
    assert sum(isinstance(m, PairedGEGLU) for m in fused.model.modules()) > 0
    assert not any(type(m) is GEGLU for m in fused.model.modules())
    inputs = example_inputs(contracts.UNET, plain.sizes(frames=4, height=64, width=64), device="cuda")
    expected, out = plain.infer(inputs)["NOISE_PRED"], fused.infer(inputs)["NOISE_PRED"]
    assert relative_l2(out, expected) < 5e-3


def test_use_fused_geglu_replaces_nothing_where_the_kernel_cannot_run():
    feed_forward = torch.nn.Sequential(GEGLU(32, 64), torch.nn.Linear(64, 32))
    assert use_fused_geglu(feed_forward) == 0
    assert type(feed_forward[0]) is GEGLU
