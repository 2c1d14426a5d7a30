"""Builds a servable Triton model repository from a diffusers-layout I2VGen-XL checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from openspeedy import contracts
from openspeedy.components import WEIGHT_FOLDERS
from openspeedy.model_config import InstanceGroup, render_config
from openspeedy.request import RequestSettings

# The adapters (model.py) live in the source tree's model_repository/, next to this package folder.
SOURCE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"

# What the reference pipeline defaults to for the published weights.
REFERENCE_SETTINGS = RequestSettings()
# The tiny model: the UNet's sample size times the VAE's 8x gives 64x64; short and fast everywhere.
TINY_SETTINGS = RequestSettings(
    default_num_frames=8,
    default_height=64,
    default_width=64,
    default_num_inference_steps=10,
    min_size=32,
    max_size=512,
    max_num_frames=32,
    max_num_inference_steps=100,
    max_frames_x_pixels=32 * 512 * 512,
)


@dataclass(frozen=True)
class ExportOptions:
    device: str = "cpu"  # cpu or gpu: the instance kind of every model
    gpus: tuple[int, ...] = ()  # with gpu: the devices to place instances on (empty = all)
    dtype: str = "float32"  # what the components compute in (float16/bfloat16 on GPUs)
    entry_instances: int = 2  # concurrent requests the orchestrator works on
    component_instances: int = 1
    settings: RequestSettings = field(default_factory=RequestSettings)


def _place(source: Path, destination: Path) -> None:
    """Hard-links a weights folder where possible (no second copy on disk), else copies it."""
    if destination.exists():
        shutil.rmtree(destination)
    try:
        shutil.copytree(source, destination, copy_function=os.link)
    except OSError:
        shutil.copytree(source, destination, dirs_exist_ok=True)


def build_repository(
    checkpoint: Path,
    output: Path,
    options: ExportOptions = ExportOptions(),
    source_repository: Path = SOURCE_REPOSITORY,
) -> Path:
    checkpoint, output = Path(checkpoint), Path(output)
    missing = [f for f in ("model_index.json", "scheduler", "vae", "unet") if not (checkpoint / f).exists()]
    if missing:
        raise FileNotFoundError(f"{checkpoint} is not a diffusers I2VGen-XL checkpoint: missing {missing}")
    kind = "KIND_GPU" if options.device == "gpu" else "KIND_CPU"

    for contract in contracts.COMPONENTS:
        version = output / contract.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        for folder in WEIGHT_FOLDERS[contract.name]:
            _place(checkpoint / folder, version / folder)
        shutil.copy2(source_repository / contract.name / "1" / "model.py", version / "model.py")
        group = InstanceGroup(kind, options.component_instances, options.gpus)
        (output / contract.name / "config.pbtxt").write_text(
            render_config(contract, instance_group=group, parameters={"dtype": options.dtype})
        )

    vae_config = json.loads((checkpoint / "vae" / "config.json").read_text())
    entry_parameters = options.settings.as_parameters() | {"vae_scaling_factor": str(vae_config["scaling_factor"])}
    for contract in contracts.ENTRY_MODELS:
        version = output / contract.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        _place(checkpoint / "scheduler", version / "scheduler")
        shutil.copy2(source_repository / contract.name / "1" / "model.py", version / "model.py")
        group = InstanceGroup(kind, options.entry_instances, options.gpus)
        (output / contract.name / "config.pbtxt").write_text(
            render_config(contract, instance_group=group, parameters=entry_parameters)
        )
    return output
