"""diffusers' forward restated in stages (openspeedy/unet/staged_forward.py): the same numbers, with the CFG
pair's shared layers computed on one row where the shared inputs come with one."""

import pytest
import torch

from openspeedy import contracts
from openspeedy.unet import staged_forward
from openspeedy.unet.feature_reuse import shallow_step
from tests.helpers import ConvInRows, diffusers_call, forward_arguments

SHARED = contracts.UNET_CFG_SHARED_INPUTS


def test_staged_forward_computes_shared_rows_once(diffusers_unet, cfg_inputs):
    frames = cfg_inputs["SAMPLE"].shape[2]
    one_row = {name: cfg_inputs[name][:1] if name in SHARED else cfg_inputs[name] for name in cfg_inputs}
    with torch.no_grad():
        expected, expected_deep = staged_forward.forward(diffusers_unet, *forward_arguments(cfg_inputs))
        assert torch.equal(expected, diffusers_call(diffusers_unet, cfg_inputs))
        counted = ConvInRows(diffusers_unet)
        noise, deep = staged_forward.forward(diffusers_unet, *forward_arguments(one_row))
        shallow = shallow_step(diffusers_unet, *forward_arguments(one_row), expected_deep)
    assert counted.rows == [frames, frames]  # once per path: one row, not the pair
    torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deep, expected_deep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shallow, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(noise[0], noise[1])  # the rows still differ where their embeddings do


def test_staged_forward_refuses_rows_that_do_not_divide(diffusers_unet, inputs):
    three = inputs | {"ENCODER_HIDDEN_STATES": torch.cat([inputs["ENCODER_HIDDEN_STATES"]] * 3)[:3]}
    with torch.no_grad(), pytest.raises(ValueError, match="SAMPLE has 2 rows, ENCODER_HIDDEN_STATES 3"):
        staged_forward.forward(diffusers_unet, *forward_arguments(three))
