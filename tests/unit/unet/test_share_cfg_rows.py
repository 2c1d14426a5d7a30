"""A CFG pair's shared layers once (openspeedy/unet/share_cfg_rows.py): only where the pair's rows are equal,
with the prediction of the pair computed in full, and the video kept."""

import pytest
import torch

from openspeedy.components import load_component
from openspeedy.unet.options import FAST, UNetOptions
from openspeedy.unet.share_cfg_rows import read_later
from tests.helpers import ConvInRows

ONE = torch.ones(1, dtype=torch.int32)
SHARED = UNetOptions(share_cfg_rows=True).as_parameters()


def test_unet_shares_cfg_rows_only_where_they_are_equal(tiny_checkpoint, inputs, cfg_inputs):
    plain = load_component("unet", tiny_checkpoint)
    shared = load_component("unet", tiny_checkpoint, options=SHARED)
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
    shared = load_component("unet", tiny_checkpoint, options=SHARED)
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


def test_read_later_reads_the_value_when_asked():
    assert read_later(torch.tensor(True))() is True
    assert read_later(torch.tensor(False))() is False


@pytest.mark.gpu
def test_rows_are_read_after_the_launch_on_cuda(tiny_checkpoint, inputs, cfg_inputs, monkeypatch):
    """On CUDA, through the graphs, as `fast` runs: a shared pair, a pair that differs right after it, and
    a shared pair again each give the eager forward's prediction."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = load_component("unet", tiny_checkpoint, "cuda")
    fast = load_component("unet", tiny_checkpoint, "cuda", options=FAST.as_parameters())
    on_cuda = [{name: value.cuda() for name, value in batch.items()} for batch in (cfg_inputs, inputs)]
    for batch in (*on_cuda, *on_cuda, on_cuda[0]):
        torch.testing.assert_close(fast.infer(batch)["NOISE_PRED"], eager.infer(batch)["NOISE_PRED"],
                                   rtol=1e-4, atol=1e-4)


def test_shared_cfg_rows_keep_the_video(tiny_checkpoint, local_pipeline):
    from tests.unit.test_approximations import request

    shared = load_component("unet", tiny_checkpoint, options=SHARED)
    exact = local_pipeline.denoise(request())
    local_pipeline.call_model.components["unet"], unet = shared, local_pipeline.call_model.components["unet"]
    try:
        latents = local_pipeline.denoise(request())
    finally:
        local_pipeline.call_model.components["unet"] = unet
    assert not torch.equal(latents, exact)  # computed another way: batch-1 rounding
    assert float((latents - exact).norm() / exact.norm()) < 1e-5
