"""The lossless UNet techniques (temporal attention kernel, whole-forward CUDA graphs, the CFG pair's shared
layers once) change speed, not results; the staged forward is diffusers' forward, bit for bit. On a CPU the
attention op is SDPA itself and CUDA graphs are off; the tests marked gpu run the kernel and the graphs where
CUDA exists."""

import os
import re

import pytest
import torch
from diffusers import I2VGenXLUNet
from torch import nn

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.cuda_graphs import GraphedCallable
from openspeedy.example_inputs import as_cfg_pair, example_inputs
from openspeedy.unet import staged_forward
from openspeedy.unet.feature_reuse import full_step, shallow_path_supported, shallow_step
from openspeedy.unet.layout import TemporalConvAs2d
from openspeedy.unet.temporal_attention import (
    TemporalAttentionProcessor,
    _sdpa,
    temporal_attention,
    use_temporal_attention_kernel,
)
from openspeedy.unet.variants import TORCH_VARIANTS

ONE = torch.ones(1, dtype=torch.int32)


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    unet = load_component("unet", tiny_checkpoint)
    return example_inputs(contracts.UNET, unet.sizes(frames=5, height=72, width=88),
                          generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def diffusers_unet(tiny_checkpoint):
    return I2VGenXLUNet.from_pretrained(tiny_checkpoint / "unet").eval()


def call(unet, inputs):
    return unet(inputs["SAMPLE"], inputs["TIMESTEP"], fps=inputs["FPS"], image_latents=inputs["IMAGE_LATENTS"],
                image_embeddings=inputs["IMAGE_EMBEDDINGS"], encoder_hidden_states=inputs["ENCODER_HIDDEN_STATES"],
                return_dict=False)[0]


def reuse_arguments(inputs):
    return (inputs["SAMPLE"], inputs["TIMESTEP"], inputs["FPS"], inputs["IMAGE_LATENTS"], inputs["IMAGE_EMBEDDINGS"],
            inputs["ENCODER_HIDDEN_STATES"])


def test_flop_counter_counts_the_temporal_attention_as_the_sdpa_it_replaces():
    """bench.unet_calls rates a UNet call by FlopCounterMode's count: the op counts what the counter counts
    for SDPA on the GPU (and the SDPA it falls back to on a CPU does not count a second time)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    query, key, value = (torch.randn(6, 7, 2 * 16) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        temporal_attention(query, key, value, 2)
    assert counter.get_total_flops() == sdpa_flop_count((6, 2, 7, 16), (6, 2, 7, 16), (6, 2, 7, 16)) > 0


def test_temporal_attention_processor_is_diffusers_arithmetic(tiny_checkpoint, inputs):
    fused = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true"})
    kernel = load_component("unet", tiny_checkpoint, options={"fuse_qkv": "true", "temporal_attention_kernel": "true"})
    processors = [m.processor for m in kernel.model.modules() if hasattr(m, "processor")]
    assert sum(isinstance(p, TemporalAttentionProcessor) for p in processors) > 0
    assert not all(isinstance(p, TemporalAttentionProcessor) for p in processors)  # spatial ones keep theirs
    torch.testing.assert_close(kernel.infer(inputs)["NOISE_PRED"], fused.infer(inputs)["NOISE_PRED"], rtol=0, atol=0)


def test_temporal_attention_processor_without_fused_projections(diffusers_unet, inputs):
    expected = call(diffusers_unet, inputs)
    unet = I2VGenXLUNet.from_config(diffusers_unet.config).eval()
    unet.load_state_dict(diffusers_unet.state_dict())
    assert use_temporal_attention_kernel(unet) > 0
    with torch.no_grad():
        torch.testing.assert_close(call(unet, inputs), expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sequences, frames, heads", [(8192, 16, 5), (512, 16, 20), (300, 7, 2), (64, 40, 3)])
def test_kernel_matches_sdpa_at_the_unet_shapes(sequences, frames, heads, dtype):
    torch.manual_seed(0)
    qkv = torch.randn(sequences, frames, 3 * heads * 64, device="cuda", dtype=dtype)
    q, k, v = qkv.chunk(3, dim=-1)  # strided views, as fused QKV projections give them
    expected = _sdpa(q.float(), k.float(), v.float(), heads)
    out = temporal_attention(q, k, v, heads)
    assert out.is_contiguous() and out.dtype == dtype
    # Within a few roundings of the dtype: its output and the attention weights are stored in it.
    assert float((out.float() - expected).norm() / expected.norm()) < 2 * torch.finfo(dtype).eps


def test_op_traces_under_torch_compile():
    q, k, v = (torch.randn(6, 4, 8) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: temporal_attention(q, k, v, 2) * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), _sdpa(q, k, v, 2) * 2)


def test_full_step_is_diffusers_forward_bit_for_bit(diffusers_unet, inputs):
    assert shallow_path_supported(diffusers_unet)
    with torch.no_grad():
        noise, deep = full_step(diffusers_unet, *reuse_arguments(inputs))
        assert torch.equal(noise, call(diffusers_unet, inputs))
        # The shallow path on the same step's own deep features recomputes exactly the full step's output.
        assert torch.equal(shallow_step(diffusers_unet, *reuse_arguments(inputs), deep), noise)
    frames = inputs["SAMPLE"].shape[2]
    assert deep.shape[0] == inputs["SAMPLE"].shape[0] * frames


def test_unet_component_serves_both_feature_reuse_paths(tiny_checkpoint, inputs):
    unet = load_component("unet", tiny_checkpoint)
    plain = unet.infer(inputs)
    assert set(plain) == {"NOISE_PRED"}
    full = unet.infer(inputs | {"RETURN_DEEP_FEATURES": ONE})
    assert torch.equal(full["NOISE_PRED"], plain["NOISE_PRED"])
    assert full["DEEP_FEATURES"].dtype == torch.float32  # the contract's float type between models
    shallow = unet.infer(inputs | {"DEEP_FEATURES": full["DEEP_FEATURES"]})
    assert torch.equal(shallow["NOISE_PRED"], plain["NOISE_PRED"])
    later = inputs | {"TIMESTEP": torch.tensor([500]), "DEEP_FEATURES": full["DEEP_FEATURES"]}
    assert not torch.equal(unet.infer(later)["NOISE_PRED"], plain["NOISE_PRED"])


def test_cuda_graphs_option_is_ignored_on_a_cpu(tiny_checkpoint, inputs):
    unet = load_component("unet", tiny_checkpoint, options={"cuda_graphs": "true"})
    assert not any(isinstance(fn, GraphedCallable) for fn in unet.paths.values())


@pytest.mark.gpu
def test_graphed_callable_replays_the_function():
    weight = torch.randn(64, 64, device="cuda")

    def fn(x, y):
        return (torch.relu(x @ weight) + y,)

    graphed = GraphedCallable(fn)
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 64, device="cuda")
    graphed.capture(x, y)
    for _ in range(3):
        x, y = torch.randn_like(x), torch.randn_like(y)
        (out,) = graphed(x, y)
        torch.testing.assert_close(out, fn(x, y)[0])
    (first,) = graphed(x, y)
    graphed(torch.zeros_like(x), y)
    torch.testing.assert_close(first, fn(x, y)[0])  # outputs are clones: a later replay leaves them be
    (other,) = graphed(torch.randn(8, 64, device="cuda"), torch.randn(8, 64, device="cuda"))  # never captured
    assert other.shape == (8, 64) and len(graphed.graphs) == 1


@pytest.mark.gpu
def test_graphs_are_bounded_in_number():
    graphed = GraphedCallable(lambda x: (x * 2,), max_graphs=2)
    for rows in (1, 2, 3, 4):
        x = torch.randn(rows, 8, device="cuda")
        graphed.capture(x)
        torch.testing.assert_close(graphed(x)[0], x * 2)
    assert len(graphed.graphs) == 2


@pytest.mark.gpu
def test_fast_variant_keeps_the_noise_prediction(tiny_checkpoint, monkeypatch):
    # PyTorch lets cuDNN round float32 convolutions to TF32 by default, which turns the paths' 1e-6
    # differences of summation order into 1e-3 ones; in full float32 they stay at rounding level.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = load_component("unet", tiny_checkpoint, "cuda")
    fast = load_component("unet", tiny_checkpoint, "cuda", options=TORCH_VARIANTS["fast"])
    inputs = example_inputs(contracts.UNET, eager.sizes(frames=4, height=64, width=64), device="cuda")
    expected = eager.infer(inputs)["NOISE_PRED"]
    for _ in range(2):  # the first call captures, the second replays
        torch.testing.assert_close(fast.infer(inputs)["NOISE_PRED"], expected, rtol=1e-4, atol=1e-4)


def test_compile_cache_dir_takes_effect_after_torch_chose_its_default(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")  # what torch sets on first use
    for name in ("TRITON_CACHE_DIR", "QUACK_CACHE_DIR", "QUACK_CACHE_AUTOTUNING"):
        monkeypatch.delenv(name, raising=False)
    load_component("unet", tiny_checkpoint, options={"compile_mode": "default", "compile_cache_dir": str(tmp_path)})
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert os.environ["QUACK_CACHE_DIR"] == str(tmp_path / "quack")  # the GEGLU kernel's builds and tuning
    assert os.environ["QUACK_CACHE_AUTOTUNING"] == "1"


SHARED = contracts.UNET_CFG_SHARED_INPUTS


@pytest.fixture(scope="module")
def cfg_inputs(inputs):
    """A CFG call as the pipeline makes it: both rows share the sample, image latents, timestep and fps."""
    return as_cfg_pair(inputs)


class ConvInRows:
    """Counts the rows the input convolution sees (frames x CFG rows computed)."""

    def __init__(self, unet):
        self.rows = []
        unet.conv_in.register_forward_hook(lambda _m, args, _out: self.rows.append(args[0].shape[0]))


def test_staged_forward_computes_shared_rows_once(diffusers_unet, cfg_inputs):
    frames = cfg_inputs["SAMPLE"].shape[2]
    one_row = {name: cfg_inputs[name][:1] if name in SHARED else cfg_inputs[name] for name in cfg_inputs}
    with torch.no_grad():
        expected, expected_deep = staged_forward.forward(diffusers_unet, *reuse_arguments(cfg_inputs))
        assert torch.equal(expected, call(diffusers_unet, cfg_inputs))
        counted = ConvInRows(diffusers_unet)
        noise, deep = staged_forward.forward(diffusers_unet, *reuse_arguments(one_row))
        shallow = shallow_step(diffusers_unet, *reuse_arguments(one_row), expected_deep)
    assert counted.rows == [frames, frames]  # once per path: one row, not the pair
    torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deep, expected_deep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shallow, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(noise[0], noise[1])  # the rows still differ where their embeddings do


def test_staged_forward_refuses_rows_that_do_not_divide(diffusers_unet, inputs):
    three = inputs | {"ENCODER_HIDDEN_STATES": torch.cat([inputs["ENCODER_HIDDEN_STATES"]] * 3)[:3]}
    with torch.no_grad(), pytest.raises(ValueError, match="SAMPLE has 2 rows, ENCODER_HIDDEN_STATES 3"):
        staged_forward.forward(diffusers_unet, *reuse_arguments(three))


def test_unet_shares_cfg_rows_only_where_they_are_equal(tiny_checkpoint, inputs, cfg_inputs):
    plain = load_component("unet", tiny_checkpoint)
    shared = load_component("unet", tiny_checkpoint, options={"share_cfg_rows": "true"})
    counted = ConvInRows(shared.eager_model)
    frames = inputs["SAMPLE"].shape[2]
    # Rows that differ in the sample: the pair is computed in full, bit for bit diffusers' forward.
    assert torch.equal(shared.infer(inputs)["NOISE_PRED"], plain.infer(inputs)["NOISE_PRED"])
    assert counted.rows == [2 * frames]
    expected = plain.infer(cfg_inputs)
    torch.testing.assert_close(shared.infer(cfg_inputs)["NOISE_PRED"], expected["NOISE_PRED"], rtol=1e-5, atol=1e-5)
    assert counted.rows[-1] == frames
    keep = shared.infer(cfg_inputs | {"RETURN_DEEP_FEATURES": ONE})
    full = plain.infer(cfg_inputs | {"RETURN_DEEP_FEATURES": ONE})
    torch.testing.assert_close(keep["DEEP_FEATURES"], full["DEEP_FEATURES"], rtol=1e-5, atol=1e-5)
    reused = shared.infer(cfg_inputs | {"DEEP_FEATURES": full["DEEP_FEATURES"]})["NOISE_PRED"]
    torch.testing.assert_close(reused, plain.infer(cfg_inputs | {"DEEP_FEATURES": full["DEEP_FEATURES"]})["NOISE_PRED"],
                               rtol=1e-5, atol=1e-5)
    assert counted.rows[-2:] == [frames, frames]
    one = {name: value[1:] if value.shape[0] == 2 else value for name, value in cfg_inputs.items()}
    assert torch.equal(shared.infer(one)["NOISE_PRED"], plain.infer(one)["NOISE_PRED"])  # batch 1: nothing to share


def test_rows_that_differ_after_a_shared_pair_are_computed_in_full(tiny_checkpoint, inputs, cfg_inputs):
    """After a shared pair the UNet launches the one-row forward before it knows whether the next pair
    shares its rows: a pair that does not is then computed again in full, and the next one is checked
    before anything is launched."""
    plain = load_component("unet", tiny_checkpoint)
    shared = load_component("unet", tiny_checkpoint, options={"share_cfg_rows": "true"})
    counted = ConvInRows(shared.eager_model)
    frames = inputs["SAMPLE"].shape[2]
    shared.infer(cfg_inputs)
    assert counted.rows == [frames]
    assert torch.equal(shared.infer(inputs)["NOISE_PRED"], plain.infer(inputs)["NOISE_PRED"])
    assert counted.rows[1:] == [frames, 2 * frames]  # launched on one row, then the pair in full
    assert torch.equal(shared.infer(inputs)["NOISE_PRED"], plain.infer(inputs)["NOISE_PRED"])
    assert counted.rows[3:] == [2 * frames]  # checked first: no wasted forward
    expected = plain.infer(cfg_inputs)["NOISE_PRED"]
    for _ in range(2):
        torch.testing.assert_close(shared.infer(cfg_inputs)["NOISE_PRED"], expected, rtol=1e-5, atol=1e-5)
    assert counted.rows[4:] == [frames, frames]


@pytest.mark.gpu
def test_rows_are_read_after_the_launch_on_cuda(tiny_checkpoint, inputs, cfg_inputs, monkeypatch):
    """On CUDA, through the graphs, as the served variant runs: a shared pair, a pair that differs
    right after it, and a shared pair again each give the eager forward's prediction."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = load_component("unet", tiny_checkpoint, "cuda")
    fast = load_component("unet", tiny_checkpoint, "cuda", options=TORCH_VARIANTS["fast"])
    on_cuda = [{name: value.cuda() for name, value in batch.items()} for batch in (cfg_inputs, inputs)]
    for batch in (*on_cuda, *on_cuda, on_cuda[0]):
        torch.testing.assert_close(fast.infer(batch)["NOISE_PRED"], eager.infer(batch)["NOISE_PRED"],
                                   rtol=1e-4, atol=1e-4)


def test_shared_cfg_rows_keep_the_video(tiny_checkpoint, local_pipeline):
    from tests.unit.test_approximations import request

    shared = load_component("unet", tiny_checkpoint, options={"share_cfg_rows": "true"})
    exact = local_pipeline.denoise(request())
    local_pipeline.call_model.components["unet"], unet = shared, local_pipeline.call_model.components["unet"]
    try:
        latents = local_pipeline.denoise(request())
    finally:
        local_pipeline.call_model.components["unet"] = unet
    assert not torch.equal(latents, exact)  # computed another way: batch-1 rounding
    assert float((latents - exact).norm() / exact.norm()) < 1e-5


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
    layout = {"temporal_conv2d": "true", "channels_last": "true"}
    plain = load_component("unet", tiny_checkpoint, options=layout)
    required_layout = load_component("unet", tiny_checkpoint, options=layout | {
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
            staged(unet.eager_model, *reuse_arguments(cfg_inputs))
    assert [len(requirements(graph)) for graph in graphs[1:]] == [0, len(required)]


def test_channels_last_temporal_convs_need_the_2d_convolutions(tiny_checkpoint):
    with pytest.raises(ValueError, match="channels_last_temporal_convs needs temporal_conv2d"):
        load_component("unet", tiny_checkpoint, options={"channels_last_temporal_convs": "true"})


@pytest.mark.slow
def test_fast_variant_compiles_the_shared_pair_on_a_cpu(tiny_checkpoint, cfg_inputs, monkeypatch):
    """The served variant's compiled path (CUDA graphs and the Triton kernel do not apply on a CPU):
    torch.compile traces the staged forward with one shared row and keeps the prediction. Its graph hands
    every convolution its weight as loaded: none is copied into channels-last in each call (layout
    optimisation forced on here, as Inductor turns it on for this UNet on a GPU; openspeedy/unet/layout.py)."""
    import torch._inductor.config
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(torch._inductor.config, "force_layout_optimization", True)
    expected = load_component("unet", tiny_checkpoint).infer(cfg_inputs)["NOISE_PRED"]
    fast = load_component("unet", tiny_checkpoint, options=TORCH_VARIANTS["fast"])
    counted = ConvInRows(fast.eager_model)
    outputs, code = run_and_get_code(fast.infer, cfg_inputs)
    torch.testing.assert_close(outputs["NOISE_PRED"], expected, rtol=1e-4, atol=1e-4)
    assert counted.rows == [cfg_inputs["SAMPLE"].shape[2]]  # traced once, with the shared row

    convolutions = call_arguments("\n".join(code), "extern_kernels.convolution")
    modules = [m for m in fast.eager_model.modules() if isinstance(m, (nn.Conv2d, TemporalConvAs2d))]
    assert len(convolutions) == len(modules)  # each convolution of the forward, once
    copied = [arguments[1] for arguments in convolutions if not re.fullmatch(r"arg\d+_1", arguments[1])]
    assert copied == [], f"{len(copied)} of {len(convolutions)} convolution weights are converted in every call"


def test_inductor_options_parse_to_settings_and_join_the_mode(monkeypatch):
    from openspeedy.compilation import compiler, parse_inductor_options

    assert parse_inductor_options(" coordinate_descent_tuning=true, conv_1x1_as_mm=False,"
                                  "coordinate_descent_search_radius=2") == {
        "coordinate_descent_tuning": True, "conv_1x1_as_mm": False, "coordinate_descent_search_radius": 2}
    assert parse_inductor_options("") == {}
    for text, rule in (("no_such_setting=true", "Inductor has no setting 'no_such_setting'"),
                       ("freezing", "NAME=VALUE"), ("freezing=maybe", "true, false or an integer")):
        with pytest.raises(ValueError, match=rule):
            parse_inductor_options(text)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    compiler("default", {})(print)
    compiler("reduce-overhead", {"freezing": True})(print)  # torch.compile takes a mode or options, not both
    assert calls == [dict(mode=None, dynamic=False),
                     dict(options={"triton.cudagraphs": True, "freezing": True}, dynamic=False)]


def test_a_bad_inductor_option_fails_the_load(tiny_checkpoint):
    with pytest.raises(ValueError, match="unet: inductor_options"):
        load_component("unet", tiny_checkpoint, options={"compile_mode": "default", "inductor_options": "bogus=1"})
