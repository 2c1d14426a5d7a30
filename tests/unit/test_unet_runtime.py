"""The PyTorch UNet runtime's options (config parameters of the `unet` model) change speed, not results."""

import pytest
import torch
from torch import nn

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import example_inputs
from openspeedy.unet.layout import TemporalConvAs2d, temporal_convs_as_2d


@pytest.fixture(scope="module")
def eager_unet(tiny_checkpoint):
    return load_component("unet", tiny_checkpoint)


@pytest.fixture(scope="module")
def inputs(eager_unet):
    torch.manual_seed(0)
    return example_inputs(contracts.UNET, eager_unet.sizes(frames=3, height=64, width=48))


@pytest.mark.parametrize(
    "options",
    [
        {"fuse_qkv": "true"},
        {"temporal_conv2d": "true"},
        {"temporal_conv2d": "true", "channels_last": "true"},
        {"fuse_qkv": "true", "temporal_conv2d": "true", "channels_last": "true"},
    ],
)
def test_options_keep_the_noise_prediction(tiny_checkpoint, eager_unet, inputs, options):
    expected = eager_unet.infer(inputs)["NOISE_PRED"]
    unet = load_component("unet", tiny_checkpoint, options=options)
    torch.testing.assert_close(unet.infer(inputs)["NOISE_PRED"], expected, rtol=1e-5, atol=1e-5)


def test_temporal_conv2d_replaces_every_temporal_conv3d(tiny_checkpoint):
    unet = load_component("unet", tiny_checkpoint, options={"temporal_conv2d": "true"})
    assert not [m for m in unet.model.modules() if isinstance(m, nn.Conv3d)]
    assert [m for m in unet.model.modules() if isinstance(m, TemporalConvAs2d)]


def test_temporal_conv_as_2d_is_the_same_arithmetic():
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(2, 6, 7, 4, 3)
    torch.testing.assert_close(TemporalConvAs2d(conv)(x), conv(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv3d(4, 4, (3, 3, 3), padding=1),  # spatial too
        nn.Conv3d(4, 4, (3, 1, 1), stride=(2, 1, 1)),
        nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), padding_mode="circular"),
    ],
)
def test_only_plain_temporal_convs_convert(conv):
    with pytest.raises(ValueError, match="convert"):
        TemporalConvAs2d(conv)


def test_spatial_conv3d_is_left_alone():
    model = nn.Sequential(nn.Conv3d(4, 4, (3, 3, 3), padding=1), nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)))
    assert temporal_convs_as_2d(model) == 1
    assert isinstance(model[0], nn.Conv3d) and isinstance(model[1], TemporalConvAs2d)


def test_fp8_on_a_cpu_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="fp8 needs a CUDA GPU"):
        load_component("unet", tiny_checkpoint, options={"fp8": "true"})


@pytest.mark.gpu  # torch.compile's GPU kernels
def test_compiled_unet_matches_eager_on_a_gpu(tiny_checkpoint):
    device = torch.device("cuda")
    eager = load_component("unet", tiny_checkpoint, device, "float16")
    compiled = load_component("unet", tiny_checkpoint, device, "float16",
                              {"fuse_qkv": "true", "temporal_conv2d": "true", "compile_mode": "default"})
    inputs = example_inputs(contracts.UNET, eager.sizes(frames=4, height=64, width=64), device=eager.device)
    expected = eager.infer(inputs)["NOISE_PRED"]
    torch.testing.assert_close(compiled.infer(inputs)["NOISE_PRED"], expected, rtol=2e-2, atol=2e-2)


def test_a_cudnn_other_than_torchs_fails_the_load(tiny_checkpoint, monkeypatch):
    """A library path that puts another cuDNN first must fail the model's load with torch's own message,
    not run silently slower (as it did in the GPU stubs before server.py's libpython folder)."""
    def mismatched_version():
        raise RuntimeError("cuDNN version incompatibility: PyTorch was compiled against (9, 19, 0) but found "
                           "runtime version (9, 14, 0)")

    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", mismatched_version)
    with pytest.raises(RuntimeError, match="cuDNN version incompatibility"):
        load_component("unet", tiny_checkpoint, "cuda")
    load_component("unet", tiny_checkpoint, "cpu")  # on a CPU cuDNN is not asked
