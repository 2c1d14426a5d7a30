"""The temporal attention kernel (openspeedy/unet/temporal_attention.py) is diffusers' arithmetic: on a CPU
the op is SDPA itself; the tests marked gpu run the Triton kernel against SDPA at the UNet's shapes."""

import pytest
import torch
from diffusers import I2VGenXLUNet

from openspeedy.components import load_component
from openspeedy.unet.options import UNetOptions
from openspeedy.unet.temporal_attention import (
    TemporalAttentionProcessor,
    _sdpa,
    temporal_attention,
    use_temporal_attention,
)
from tests.helpers import diffusers_call


def test_flop_counter_counts_the_temporal_attention_as_the_sdpa_it_replaces():
    """bench.unet_calls rates a UNet call by FlopCounterMode's count: the op counts what the counter counts
    for SDPA on the GPU (and the SDPA it falls back to on a CPU does not count a second time)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    query, key, value = (torch.randn(6, 7, 2 * 16) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        temporal_attention(query, key, value, 2)
    assert counter.get_total_flops() == sdpa_flop_count((6, 2, 7, 16), (6, 2, 7, 16), (6, 2, 7, 16)) > 0


def test_temporal_attention_processor_is_diffusers_arithmetic(tiny_checkpoint, inputs):
    fused = load_component("unet", tiny_checkpoint, options=UNetOptions(fuse_qkv=True).as_parameters())
    kernel = load_component("unet", tiny_checkpoint,
                            options=UNetOptions(fuse_qkv=True, temporal_attention=True).as_parameters())
    processors = [m.processor for m in kernel.model.modules() if hasattr(m, "processor")]
    assert sum(isinstance(p, TemporalAttentionProcessor) for p in processors) > 0
    assert not all(isinstance(p, TemporalAttentionProcessor) for p in processors)  # spatial ones keep theirs
    torch.testing.assert_close(kernel.infer(inputs)["NOISE_PRED"], fused.infer(inputs)["NOISE_PRED"], rtol=0, atol=0)


def test_temporal_attention_processor_without_fused_projections(diffusers_unet, inputs):
    expected = diffusers_call(diffusers_unet, inputs)
    unet = I2VGenXLUNet.from_config(diffusers_unet.config).eval()
    unet.load_state_dict(diffusers_unet.state_dict())
    assert use_temporal_attention(unet) > 0
    with torch.no_grad():
        torch.testing.assert_close(diffusers_call(unet, inputs), expected, rtol=0, atol=0)


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
