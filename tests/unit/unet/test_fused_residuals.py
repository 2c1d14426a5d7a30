"""The residual additions inside their matrix products (openspeedy/unet/fused_residuals.py). On a CPU the
compiler pass runs with the op's PyTorch arithmetic: it must find the additions of each transformer
block (and of the image-latent encoder) and nothing else, keep the prediction, and keep the on-disk
caches serving; the option is off there and says why. The
tests marked gpu run QuACK's kernel against float32 arithmetic at the UNet's shapes, inside
torch.compile and a CUDA graph, and in a half-precision UNet."""

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.unets.unet_i2vgen_xl import I2VGenXLTransformerTemporalEncoder
from torch._inductor.utils import run_and_get_code

from bench.common import relative_l2
from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.unet.fused_residuals import (
    LinearResidualPass,
    fused_residual_settings,
    kernel_unavailable,
    linear_residual,
)
from tests.helpers import needs_quack_kernel

OP_CALL = "torch.ops.openspeedy.linear_residual.default("


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test's compiles forgotten after it: torch.compile remembers the shapes a function met in this
    process and compiles it for dynamic shapes when they change (the staged forward, compiled here at one
    size, is compiled at others elsewhere)."""
    yield
    torch._dynamo.reset()


def compiled_with_pass(fn):
    """``fn`` compiled by Inductor with the pass, without the on-disk caches (a cached graph skips the
    passes); returns the pass (its count) and the compiled function."""
    fusion = LinearResidualPass()
    return fusion, torch.compile(fn, options={"post_grad_custom_pre_pass": fusion, "fx_graph_cache": False})


@torch.no_grad()
def test_pass_fuses_the_three_additions_of_a_transformer_block():
    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 2, 16, cross_attention_dim=24, activation_fn="geglu").eval()
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    fusion, compiled = compiled_with_pass(lambda x, context: block(x, encoder_hidden_states=context))
    out, (code, *_) = run_and_get_code(compiled, x, context)
    assert fusion.fused == 3  # self-attention, cross-attention, feed-forward
    assert code.count(OP_CALL) == 3
    torch.testing.assert_close(out, block(x, encoder_hidden_states=context), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_on_disk_compile_caches_keep_a_graph_compiled_with_the_pass():
    """A restart reads the compiled UNet from the on-disk caches: Inductor skips them for a graph whose
    custom pass has no stable name, so the pass's uuid must key them (the second compile finds the
    first's graph and runs no pass)."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 2, 16, cross_attention_dim=24, activation_fn="geglu").eval()
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    fused = []
    with fresh_cache():
        for _ in range(2):  # as two processes would: nothing compiled kept in memory
            torch._dynamo.reset()
            counters.clear()
            fusion = LinearResidualPass()
            torch.compile(lambda x, context: block(x, encoder_hidden_states=context),
                          options={"post_grad_custom_pre_pass": fusion})(x, context)
            fused.append(fusion.fused)
    assert fused == [3, 0]
    hits = counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    bypasses = counters["inductor"]["fxgraph_cache_bypass"] + counters["aot_autograd"]["autograd_cache_bypass"]
    assert hits >= 1 and bypasses == 0


@pytest.mark.parametrize("case", ["used twice", "broadcast", "scaled", "no bias", "rows"])
@torch.no_grad()
def test_pass_leaves_additions_it_cannot_fuse(case):
    torch.manual_seed(0)
    x, weight, bias, residual = torch.randn(3, 5, 16), torch.randn(8, 16), torch.randn(8), torch.randn(3, 5, 8)
    if case == "rows":  # 2D: a bare addmm, left to cuBLAS (the UNet's embeddings)
        x, residual = x[0], residual[0]

    def fn(x, residual):
        y = F.linear(x, weight, None if case == "no bias" else bias)
        if case == "used twice":  # the product itself is needed: nothing saved
            return y + residual, y * 2
        if case == "broadcast":
            return y + residual[0, 0]
        if case == "scaled":  # the epilogue would scale the bias too
            return y / 2 + residual
        return y + residual

    fusion, compiled = compiled_with_pass(fn)
    torch.testing.assert_close(compiled(x, residual), fn(x, residual), rtol=1e-5, atol=1e-5)
    assert fusion.fused == 0


def test_op_flattens_the_product_row_major_onto_the_residual():
    x, weight, bias = torch.randn(2, 6, 16), torch.randn(8, 16), torch.randn(8)
    residual = torch.randn(2, 3, 2, 8)  # the product's (12, 8) rows as another shape of as many elements
    expected = F.linear(x, weight, bias).reshape(residual.shape) + residual
    torch.testing.assert_close(linear_residual(x, weight, bias, residual), expected)


def test_flop_counter_counts_the_op_as_the_linear_it_replaces():
    from torch.utils.flop_counter import FlopCounterMode

    x, weight, bias, residual = torch.randn(3, 5, 16), torch.randn(8, 16), torch.randn(8), torch.randn(3, 5, 8)
    with FlopCounterMode(display=False) as counter:
        linear_residual(x, weight, bias, residual)
    assert counter.get_total_flops() == 2 * 15 * 16 * 8


def test_on_a_cpu_the_option_is_off_and_says_why(tiny_checkpoint, caplog):
    assert fused_residual_settings(torch.device("cpu"), torch.float16) == {}
    options = {"compile_mode": "default", "fused_residuals": "true"}
    with caplog.at_level(logging.WARNING, logger="openspeedy.unet"):
        unet = load_component("unet", tiny_checkpoint, options=options)
    line = "fused_residuals: skipped: it runs on CUDA GPUs only; the additions stay Inductor's"
    assert line in unet.recipe_report and line in caplog.text


def test_option_without_compile_mode_is_an_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="fused_residuals needs compile_mode"):
        load_component("unet", tiny_checkpoint, options={"fused_residuals": "true"})


def test_compiled_tiny_unet_fuses_every_block_and_keeps_its_prediction(tiny_checkpoint, monkeypatch):
    """The pass installed on a CPU (the op's PyTorch arithmetic) through the component's option, in the
    staged forward that `fast` compiles: each transformer block's additions, nothing else."""
    fusion = LinearResidualPass()
    monkeypatch.setattr("openspeedy.unet.fused_residuals.fused_residual_settings",
                        lambda device, dtype: {"post_grad_custom_pre_pass": fusion, "fx_graph_cache": False})
    options = {"fuse_qkv": "true", "temporal_conv2d": "true", "temporal_attention": "true", "share_cfg_rows": "true"}
    eager = load_component("unet", tiny_checkpoint, options=options)
    fused = load_component("unet", tiny_checkpoint, options=options | {"compile_mode": "default",
                                                                         "fused_residuals": "true"})
    inputs = example_inputs(contracts.UNET, eager.sizes(frames=3, height=64, width=64),
                            generator=torch.Generator().manual_seed(0))
    expected = eager.infer(inputs)["NOISE_PRED"]
    torch.testing.assert_close(fused.infer(inputs)["NOISE_PRED"], expected, rtol=1e-4, atol=1e-4)
    modules = list(eager.model.modules())
    blocks = [m for m in modules if isinstance(m, BasicTransformerBlock)]
    image_encoders = [m for m in modules if isinstance(m, I2VGenXLTransformerTemporalEncoder)]
    assert blocks and len(image_encoders) == 1  # the latter: self-attention and feed-forward only
    assert fusion.fused == sum(2 + (block.attn2 is not None) for block in blocks) + 2
    assert f"fused_residuals: applied ({fusion.fused} residual additions fused in the graphs compiled so far)" in (
        fused.recipe_report)


needs_kernel = needs_quack_kernel(kernel_unavailable, "QuACK's GEMM")


@pytest.mark.gpu
@needs_kernel
@pytest.mark.parametrize("tokens, features_in, features_out, dtype", [
    # 16 x 512x512, CFG: attention outputs and the feed-forwards' second products, 64x64 to 8x8
    *[(*shape, torch.float16) for shape in ((131072, 320, 320), (131072, 1280, 320), (32768, 2560, 640),
                                             (8192, 1280, 1280), (2048, 5120, 1280))],
    (32768, 640, 640, torch.bfloat16),
    (300, 80, 48, torch.float16), (1, 16, 16, torch.float16), (4097, 320, 328, torch.float16),  # part-filled tiles
])
def test_kernel_matches_float32_arithmetic(tokens, features_in, features_out, dtype):
    torch.manual_seed(0)
    x = torch.randn(tokens, features_in, device="cuda", dtype=dtype)
    linear = torch.nn.Linear(features_in, features_out, device="cuda", dtype=dtype)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    residual = torch.randn(tokens, features_out, device="cuda", dtype=dtype)
    with torch.inference_mode():
        expected = F.linear(x.float(), weight.float(), bias.float()) + residual.float()
        rounded = F.linear(x, weight, bias) + residual  # diffusers' own, rounding the product first
        out = linear_residual(x, weight, bias, residual)
    assert out.shape == residual.shape and out.dtype == dtype
    # One rounding to the dtype where diffusers has two: no further from float32 than diffusers is.
    assert relative_l2(out, expected) <= max(relative_l2(rounded, expected), torch.finfo(dtype).eps / 4)


@pytest.mark.gpu
@needs_kernel
def test_kernel_takes_strided_rows_and_another_shape_of_residual():
    x = torch.randn(4, 9, 64, device="cuda", dtype=torch.float16)[:, 1:]  # not contiguous in its rows
    weight = torch.randn(96, 64, device="cuda", dtype=torch.float16) / 8
    bias = torch.randn(96, device="cuda", dtype=torch.float16)
    residual = torch.randn(4, 2, 4, 96, device="cuda", dtype=torch.float16)
    out = linear_residual(x, weight, bias, residual)
    expected = F.linear(x, weight, bias).reshape(residual.shape) + residual
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@needs_kernel
def test_kernel_replays_in_a_cuda_graph_under_torch_compile():
    torch.manual_seed(0)
    linear = torch.nn.Linear(640, 640, device="cuda", dtype=torch.float16)
    fusion, compiled = compiled_with_pass(lambda x, r: linear(x * 2) + r)
    static = torch.randn(2, 2048, 640, device="cuda", dtype=torch.float16)
    residual = torch.randn_like(static)
    with torch.inference_mode():
        compiled(static, residual)  # compiles and tunes outside the capture
        assert fusion.fused == 1
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = compiled(static, residual)
        fresh = torch.randn_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.testing.assert_close(out, linear(fresh * 2) + residual, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@needs_kernel
def test_half_precision_unet_keeps_its_noise_prediction(tiny_checkpoint):
    options = {"fuse_qkv": "true", "compile_mode": "default"}
    plain = load_component("unet", tiny_checkpoint, "cuda", "float16", options)
    fused = load_component("unet", tiny_checkpoint, "cuda", "float16", options | {"fused_residuals": "true"})
    inputs = example_inputs(contracts.UNET, plain.sizes(frames=4, height=64, width=64), device="cuda")
    expected, out = plain.infer(inputs)["NOISE_PRED"], fused.infer(inputs)["NOISE_PRED"]
    assert relative_l2(out, expected) < 5e-3
