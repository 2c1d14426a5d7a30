"""Fixtures every folder shares: the tiny checkpoint and repository, in-process components; the gpu marker.

The tritonserver and Redis fixtures live in tests/server/conftest.py alone, so tests elsewhere cannot
start a server (tests/unit/conftest.py also refuses it outright)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.local_models import LocalModels
from openspeedy.pipeline import I2VGenXL


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (marked gpu)")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("repository") / "models"
    return build_repository(tiny_checkpoint, output, ExportOptions(settings=TINY_SETTINGS))


@pytest.fixture(scope="session")
def onnxruntime_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny repository with its `unet` on onnxruntime (the exported ONNX graph)."""
    output = tmp_path_factory.mktemp("repository_onnxruntime") / "models"
    return build_repository(tiny_checkpoint, output, ExportOptions(settings=TINY_SETTINGS, unet_runtime="onnxruntime"))


@pytest.fixture(scope="session")
def local_models(tiny_checkpoint) -> LocalModels:
    return LocalModels({name: load_component(name, tiny_checkpoint) for name in COMPONENT_CLASSES})


@pytest.fixture(scope="session")
def local_pipeline(tiny_checkpoint, local_models) -> I2VGenXL:
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    return I2VGenXL(local_models, scheduler, scaling)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """diffusers' I2VGenXLPipeline on the tiny checkpoint: the reference OpenSpeedy is held to."""
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(tiny_checkpoint)
    # transformers 5 flattened CLIPTextModel; the reference still reads text_encoder.text_model.
    object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
