"""Step-level feature reuse (openspeedy/unet/feature_reuse.py): the full step is diffusers' forward bit for bit,
the shallow path on its own step's deep features recomputes it, and the UNet component serves both paths."""

import torch

from openspeedy.components import load_component
from openspeedy.unet.feature_reuse import full_step, shallow_path_supported, shallow_step
from tests.helpers import diffusers_call, forward_arguments

ONE = torch.ones(1, dtype=torch.int32)


def test_full_step_is_diffusers_forward_bit_for_bit(diffusers_unet, inputs):
    assert shallow_path_supported(diffusers_unet)
    with torch.no_grad():
        noise, deep = full_step(diffusers_unet, *forward_arguments(inputs))
        assert torch.equal(noise, diffusers_call(diffusers_unet, inputs))
        # The shallow path on the same step's own deep features recomputes exactly the full step's output.
        assert torch.equal(shallow_step(diffusers_unet, *forward_arguments(inputs), deep), noise)
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
