"""The PyTorch UNet runtime (openspeedy/unet/runtime.py): its options change speed, not results; a key it
does not know fails the load; a cuDNN other than torch's fails it too. On a GPU, `fast` against `eager` at
the published architecture's widths (random weights) within half precision's rounding."""

import pytest
import torch

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import as_cfg_pair, example_inputs, unet_sizes
from openspeedy.unet.options import EAGER, FAST, UNetOptions


@pytest.fixture(scope="module")
def eager_unet(tiny_checkpoint):
    return load_component("unet", tiny_checkpoint)


@pytest.fixture(scope="module")
def small_inputs(eager_unet):
    torch.manual_seed(0)
    return example_inputs(contracts.UNET, eager_unet.sizes(frames=3, height=64, width=48))


@pytest.mark.parametrize(
    "options",
    [
        UNetOptions(fuse_qkv=True),
        UNetOptions(temporal_conv2d=True),
        UNetOptions(temporal_conv2d=True, channels_last=True),
        UNetOptions(fuse_qkv=True, temporal_conv2d=True, channels_last=True),
    ],
    ids=lambda options: options.spelling(),
)
def test_options_keep_the_noise_prediction(tiny_checkpoint, eager_unet, small_inputs, options):
    expected = eager_unet.infer(small_inputs)["NOISE_PRED"]
    unet = load_component("unet", tiny_checkpoint, options=options.as_parameters())
    torch.testing.assert_close(unet.infer(small_inputs)["NOISE_PRED"], expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_parameter_fails_the_load_naming_it(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown parameter 'fused_residual'.*fused_residuals"):
        load_component("unet", tiny_checkpoint, options={"fused_residual": "true"})
    with pytest.raises(ValueError, match="fuse_qkv takes true or false, got 'ture'"):
        load_component("unet", tiny_checkpoint, options={"fuse_qkv": "ture"})


@pytest.mark.gpu  # torch.compile's GPU kernels
def test_compiled_unet_matches_eager_on_a_gpu(tiny_checkpoint):
    device = torch.device("cuda")
    eager = load_component("unet", tiny_checkpoint, device, "float16")
    options = UNetOptions(fuse_qkv=True, temporal_conv2d=True, compile_mode="default")
    compiled = load_component("unet", tiny_checkpoint, device, "float16", options.as_parameters())
    inputs = example_inputs(contracts.UNET, eager.sizes(frames=4, height=64, width=64), device=eager.device)
    expected = eager.infer(inputs)["NOISE_PRED"]
    torch.testing.assert_close(compiled.infer(inputs)["NOISE_PRED"], expected, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_fast_keeps_the_noise_prediction_of_the_tiny_unet(tiny_checkpoint, monkeypatch):
    # PyTorch lets cuDNN round float32 convolutions to TF32 by default, which turns the paths' 1e-6
    # differences of summation order into 1e-3 ones; in full float32 they stay at rounding level.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = load_component("unet", tiny_checkpoint, "cuda")
    fast = load_component("unet", tiny_checkpoint, "cuda", options=FAST.as_parameters())
    inputs = example_inputs(contracts.UNET, eager.sizes(frames=4, height=64, width=64), device="cuda")
    expected = eager.infer(inputs)["NOISE_PRED"]
    for _ in range(2):  # the first call captures, the second replays
        torch.testing.assert_close(fast.infer(inputs)["NOISE_PRED"], expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def full_size_unet(tmp_path_factory):
    """The published UNet's architecture with random float16 weights, saved as a checkpoint's unet/ folder
    (the UNet alone: the component loads nothing else)."""
    from diffusers import I2VGenXLUNet

    from openspeedy.export.random_checkpoint import FULL_SIZE

    directory = tmp_path_factory.mktemp("full_size")
    torch.manual_seed(0)
    with torch.device("cuda"):  # seconds, not minutes, for 1.4 B parameters
        unet = I2VGenXLUNet(in_channels=4, out_channels=4, **FULL_SIZE.unet).half()
    unet.save_pretrained(directory / "unet")
    return directory


@pytest.mark.gpu
def test_fast_against_eager_at_the_full_size_architecture(full_size_unet):
    """Every technique `fast` turns on at the published widths (QuACK's where it is installed, the recipe
    report says which ran): the CFG pair's prediction within float16 rounding of eager's."""
    eager = load_component("unet", full_size_unet, "cuda", "float16", EAGER.as_parameters())
    config = eager.eager_model.config
    torch.manual_seed(0)
    inputs = as_cfg_pair(example_inputs(contracts.UNET, unet_sizes(config, 8, 32, 32), device="cuda"))
    expected = eager.infer(inputs)["NOISE_PRED"]
    del eager
    torch.cuda.empty_cache()
    fast = load_component("unet", full_size_unet, "cuda", "float16", FAST.as_parameters())
    print("\n".join(fast.recipe_report))
    for _ in range(2):  # the first call compiles and captures, the second replays
        out = fast.infer(inputs)["NOISE_PRED"]
        assert float((out - expected).norm() / expected.norm()) < 1e-2


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
