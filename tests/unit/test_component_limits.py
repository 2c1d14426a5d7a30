"""The components' own limits, queues and caller key, and the entry models' priority setting, as exported."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from openspeedy import contracts
from openspeedy.component_limits import ComponentLimits
from openspeedy.errors import InvalidInput
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, model_configs
from openspeedy.model_config import QueuePolicy
from openspeedy.serving import caller_key

TINY = ComponentLimits.from_settings(TINY_SETTINGS)


def test_limits_follow_the_entry_models_settings_through_the_config():
    assert (TINY.max_frames, TINY.max_size, TINY.max_prompt_bytes) == (32, 512, TINY_SETTINGS.max_prompt_bytes)
    configs = model_configs(ExportOptions(settings=TINY_SETTINGS), 0.18125)
    for contract in contracts.COMPONENTS:
        assert 'key: "limit_max_frames" value: { string_value: "32" }' in configs[contract.name]
        assert "dynamic_batching { default_queue_policy { max_queue_size: 8 " in configs[contract.name]
    assert ComponentLimits.from_parameters(TINY.as_parameters()) == TINY


def test_the_orchestrators_own_calls_pass():
    """What the pipeline sends for the largest request the tiny settings allow (32 frames fill the
    frame-pixel budget at 512x512), with classifier-free guidance."""
    latent = 512 // 8
    TINY.check(contracts.UNET, {"SAMPLE": torch.zeros(2, 4, 32, latent, latent),
                                "ENCODER_HIDDEN_STATES": torch.zeros(2, 77, 16),
                                "DEEP_FEATURES": torch.zeros(64, 16, latent, latent)})
    TINY.check(contracts.VAE_DECODER, {"LATENTS": torch.zeros(32, 4, latent, latent),
                                       "DECODE_CHUNK_SIZE": torch.tensor([0], dtype=torch.int32)})
    TINY.check(contracts.IMAGE_ENCODER, {"IMAGE": torch.zeros(1, 512, 512, 3, dtype=torch.uint8)})
    TINY.check(contracts.TEXT_ENCODER, {"PROMPT": np.array(["é".encode() * 100], dtype=object)})


@pytest.mark.parametrize(
    "contract, inputs, message",
    [
        (contracts.UNET, {"SAMPLE": torch.zeros(2, 4, 33, 8, 8)}, "'SAMPLE': has 33 on axis 'frames'; the limit is 32"),
        (contracts.UNET, {"SAMPLE": torch.zeros(3, 4, 2, 8, 8)}, "'SAMPLE': has 3 on axis 'batch'"),
        (contracts.UNET, {"SAMPLE": torch.zeros(2, 4, 2, 65, 8)}, "'SAMPLE': has 65 on axis 'height'; the limit is 64"),
        (contracts.UNET, {"ENCODER_HIDDEN_STATES": torch.zeros(2, 5000, 16)}, "has 5000 on axis 'tokens'"),
        (contracts.UNET, {"DEEP_FEATURES": torch.zeros(65, 16, 8, 8)}, "has 65 on axis 'batch_frames'"),
        (contracts.VAE_DECODER, {"LATENTS": torch.zeros(32, 4, 64, 72)}, "the limit is 64"),
        (contracts.VAE_DECODER, {"LATENTS": torch.zeros(2, 4, 8, 8),
                                 "DECODE_CHUNK_SIZE": torch.tensor([2000], dtype=torch.int32)},
         "'DECODE_CHUNK_SIZE': must be between 0 and 1024, got 2000"),
        (contracts.VAE_ENCODER, {"IMAGE": torch.zeros(1, 520, 64, 3, dtype=torch.uint8)}, "has 520 on axis 'height'"),
        (contracts.TEXT_ENCODER, {"PROMPT": np.array([b"a"] * 3, dtype=object)}, "has 3 on axis 'batch'"),
        (contracts.TEXT_ENCODER, {"PROMPT": np.array([b"\xff"], dtype=object)}, "must be valid UTF-8"),
        (contracts.VAE_DECODER, {"LATENTS": torch.zeros(0, 4, 8, 8)}, "'LATENTS': has no elements on axis 'frames'"),
        (contracts.TEXT_ENCODER, {"PROMPT": np.array([], dtype=object)}, "has no elements on axis 'batch'"),
    ],
)
def test_a_call_over_the_limits_is_refused_naming_its_input(contract, inputs, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        TINY.check(contract, inputs)


def test_frames_times_pixels_is_bounded_in_latent_space():
    limits = ComponentLimits(max_size=512, max_frames=32, max_frames_x_pixels=8 * 512 * 512)
    limits.check(contracts.VAE_DECODER, {"LATENTS": torch.zeros(8, 4, 64, 64)})
    with pytest.raises(InvalidInput, match="has 9 frames of 4096 pixels; the limit is 32768 frame pixels"):
        limits.check(contracts.VAE_DECODER, {"LATENTS": torch.zeros(9, 4, 64, 64)})


def test_priority_is_off_unless_the_operator_turns_it_on():
    off = QueuePolicy().render()
    assert "priority" not in off and "max_queue_size: 8" in off
    on = QueuePolicy(priority_levels=2, high_priority_queue_size=1).render()
    assert "priority_levels: 2 default_priority_level: 2" in on
    assert "priority_queue_policy { key: 1 value: { max_queue_size: 1 " in on
    with pytest.raises(ValueError, match="priority_levels must be 0"):
        QueuePolicy(priority_levels=3)


def test_exported_entry_models_carry_a_request_time_limit():
    for settings, limit in ((TINY_SETTINGS, "300.0"), (ExportOptions().settings, "600.0")):
        configs = model_configs(ExportOptions(settings=settings), 0.18125)
        for contract in contracts.ENTRY_MODELS:
            assert f'key: "max_request_seconds" value: {{ string_value: "{limit}" }}' in configs[contract.name]


def test_the_caller_key_is_one_per_server_and_private(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    caller_key.server_key.cache_clear()
    try:
        key = caller_key.server_key()
        path = caller_key.key_path()
        assert path.read_text() == key and len(key) == 64
        assert os.stat(path).st_mode & 0o077 == 0
        assert caller_key.carries_key(f'{{"{caller_key.PARAMETER}": "{key}"}}')
        assert not caller_key.carries_key(f'{{"{caller_key.PARAMETER}": "{"0" * 64}"}}')
        assert not caller_key.carries_key("{}") and not caller_key.carries_key("not json")
        caller_key.server_key.cache_clear()
        assert caller_key.server_key() == key  # another model process of the same server reads the same key
        caller_key.server_key.cache_clear()
        os.chmod(path, 0o644)  # a file others could have written is no key
        with pytest.raises(PermissionError, match="readable by it alone"):
            caller_key.server_key()
    finally:
        caller_key.server_key.cache_clear()


def test_a_new_server_removes_the_keys_of_servers_gone(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    gone, alive = caller_key.key_path(ended.pid), caller_key.key_path(os.getpid())
    gone.write_text("old")
    alive.write_text("live")
    assert caller_key.remove_stale_keys() == [gone]
    assert not gone.exists() and alive.exists()
