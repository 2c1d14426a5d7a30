"""What users deploy is the fast path: a GPU export serves the UNet's fast options, the compiled decoder and
a warm-up at the entry model's default size without any flag; --unet-options eager opts out; a CPU
export stays eager."""

from __future__ import annotations

import argparse

from openspeedy.export.__main__ import add_arguments, export_options
from openspeedy.export.repository import model_configs
from openspeedy.unet.options import FAST


def configs(tmp_path, *arguments: str) -> dict[str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    _, options = export_options(parser.parse_args(["--tiny", "--output", str(tmp_path / "repository"), *arguments]))
    return model_configs(options, 0.18125)


def parameter(config: str, key: str) -> str | None:
    for line in config.splitlines():
        if line.startswith(f'parameters {{ key: "{key}" '):
            return line.split('string_value: "')[1].split('"')[0]
    return None


def test_a_gpu_export_serves_the_fast_path_without_flags(tmp_path):
    rendered = configs(tmp_path, "--device", "gpu")
    for key, value in FAST.as_parameters().items():
        assert parameter(rendered["unet"], key) == value, key
    assert parameter(rendered["vae_decoder"], "compile_mode") == "default"
    # The tiny model's default size: 8 frames at 64x64.
    for model in ("unet", "vae_decoder"):
        assert parameter(rendered[model], "warmup_shapes") == "8x64x64"
    assert parameter(rendered["vae_encoder"], "compile_mode") is None  # once per image; the cache skips it


def test_unet_options_eager_opts_out(tmp_path):
    rendered = configs(tmp_path, "--device", "gpu", "--unet-options", "eager", "--vae-decoder-compile-mode", "")
    for key in FAST.as_parameters():
        assert parameter(rendered["unet"], key) is None, key
    assert parameter(rendered["vae_decoder"], "compile_mode") is None


def test_a_cpu_export_stays_eager(tmp_path):
    rendered = configs(tmp_path)
    assert parameter(rendered["unet"], "compile_mode") is None
    assert parameter(rendered["vae_decoder"], "compile_mode") is None
    assert parameter(rendered["unet"], "warmup_shapes") is None
