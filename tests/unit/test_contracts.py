"""Every config.pbtxt (committed and exported) agrees with the contracts declared in the package."""

import pytest
from tritonclient.grpc import model_config_pb2

from openspeedy import contracts
from openspeedy.unet.options import FAST
from tests.helpers import SOURCE_REPOSITORY as SOURCE
from tests.helpers import assert_agrees, parse, tensors


@pytest.mark.parametrize("contract", contracts.ALL_MODELS, ids=lambda c: c.name)
def test_committed_config_agrees_with_contract(contract):
    assert_agrees(parse(SOURCE / contract.name / "config.pbtxt"), contract)
    assert (SOURCE / contract.name / "1" / "model.py").exists()


@pytest.mark.parametrize("contract", contracts.ALL_MODELS, ids=lambda c: c.name)
def test_exported_config_agrees_with_contract(tiny_repository, contract):
    config = parse(tiny_repository / contract.name / "config.pbtxt")
    assert_agrees(config, contract)
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"


def test_gpu_export_places_instances_on_gpus(tiny_checkpoint, tmp_path):
    from openspeedy.export.repository import ExportOptions, build_repository

    repository = build_repository(tiny_checkpoint, tmp_path / "gpu", ExportOptions(device="gpu", gpus=(0, 1),
                                                                                   dtype="float16"))
    for contract in contracts.ALL_MODELS:
        config = parse(repository / contract.name / "config.pbtxt")
        group = config.instance_group[0]
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert list(group.gpus) == [0, 1]
    assert parse(repository / "unet" / "config.pbtxt").parameters["dtype"].string_value == "float16"
    entry = parse(repository / "i2vgen_xl" / "config.pbtxt").parameters
    assert entry["vae_scaling_factor"].string_value == "0.18125"
    assert entry["default_num_frames"].string_value == "16"  # the reference pipeline's default


def test_per_gpu_export_pins_a_copy_of_each_component_to_each_gpu(tiny_checkpoint, tmp_path):
    from openspeedy.export.repository import ExportOptions, build_repository

    options = ExportOptions(device="gpu", gpus=(0, 1), dtype="float16", per_gpu_components=True)
    repository = build_repository(tiny_checkpoint, tmp_path / "per_gpu", options)
    for contract in contracts.COMPONENTS:
        assert not (repository / contract.name).exists()
        for gpu in (0, 1):
            name = contracts.gpu_model_name(contract.name, gpu)
            config = parse(repository / name / "config.pbtxt")
            assert config.name == name and list(config.instance_group[0].gpus) == [gpu]
            assert tensors(config.input, True) == {s.name: (s.datatype, s.dims, s.optional) for s in contract.inputs}
            assert (repository / name / "1" / "model.py").read_text() == (
                SOURCE / contract.name / "1" / "model.py").read_text()
            assert contracts.component_of(name) == contract.name
    for contract in contracts.ENTRY_MODELS:  # orchestrators on every GPU, each routing to its own copies
        config = parse(repository / contract.name / "config.pbtxt")
        assert list(config.instance_group[0].gpus) == [0, 1]
        assert config.parameters["components_per_gpu"].string_value == "true"


@pytest.mark.parametrize("options", [dict(device="cpu"), dict(device="gpu", gpus=())])
def test_per_gpu_export_needs_named_gpus(options):
    from openspeedy.export.repository import ExportOptions

    with pytest.raises(ValueError, match="per_gpu_components needs device 'gpu' and the GPUs named"):
        ExportOptions(per_gpu_components=True, **options)


def test_component_of_a_model_name():
    assert contracts.component_of("unet") == "unet"
    assert contracts.component_of("vae_decoder_gpu12") == "vae_decoder"
    assert contracts.component_of("i2vgen_xl") == "i2vgen_xl"


def test_committed_configs_are_the_rendered_defaults():
    from openspeedy.export.repository import PUBLISHED_VAE_SCALING_FACTOR, ExportOptions, model_configs

    for name, text in model_configs(ExportOptions(), PUBLISHED_VAE_SCALING_FACTOR).items():
        assert (SOURCE / name / "config.pbtxt").read_text() == text, f"regenerate {name}: make configs"


def test_export_command_line_reaches_the_configs(tmp_path):
    from openspeedy.export.__main__ import main

    output = tmp_path / "models"
    main(["--tiny", "--output", str(output), "--warmup-shapes", "2x64x64", "--max-queue-size", "3",
          "--cache-redis-ttl-s", "60", "--no-cache", "--unet-options", "fast",
          "--vae-decoder-compile-mode", "default", "--vae-encoder-compile-mode", "default",
          "--compile-cache-dir", str(tmp_path / "cache")])
    for vae in ("vae_decoder", "vae_encoder"):
        config = parse(output / vae / "config.pbtxt")
        assert config.parameters["compile_mode"].string_value == "default"
        assert config.parameters["compile_cache_dir"].string_value == str(tmp_path / "cache")
        assert config.parameters["warmup_shapes"].string_value == "2x64x64"
    assert "compile_mode" not in parse(output / "text_encoder" / "config.pbtxt").parameters
    unet = parse(output / "unet" / "config.pbtxt")
    assert unet.parameters["warmup_shapes"].string_value == "2x64x64"
    assert unet.parameters["compile_mode"].string_value == "default"
    switched_on = {key for key, value in unet.parameters.items() if value.string_value == "true"}
    assert switched_on == set(FAST.techniques_on) - {"compile_mode"}  # `fast`, every boolean technique of it
    entry = parse(output / "i2vgen_xl" / "config.pbtxt")
    assert entry.dynamic_batching.default_queue_policy.max_queue_size == 3
    assert entry.parameters["cache_redis_ttl_s"].string_value == "60"
    assert entry.parameters["cache_enabled"].string_value == "false"
    assert entry.parameters["image_weights_fingerprint"].string_value  # computed from the weights
