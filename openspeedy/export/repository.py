"""Builds a servable Triton model repository from a diffusers-layout I2VGen-XL checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from openspeedy import contracts
from openspeedy.cache import fingerprint_files
from openspeedy.component_limits import ComponentLimits
from openspeedy.components import COMPONENT_CLASSES
from openspeedy.export import unet_repository
from openspeedy.export.options import ExportOptions
from openspeedy.model_config import InstanceGroup, QueuePolicy, render_config
from openspeedy.request import RequestSettings
from openspeedy.unet.fp8 import unet_dtype

# The adapters (model.py) live in the source tree's model_repository/, next to this package folder.
SOURCE_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

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
    # A tiny request takes about a second on an idle CPU; a busy 2-core machine needs minutes for its largest.
    max_request_seconds=300.0,
)


def _cfg_parallel_parameters(options: ExportOptions) -> dict[str, str]:
    """The entry models' switch for the CFG-parallel halves (read by openspeedy.serving.entry_model)."""
    if not options.cfg_parallel:
        return {}
    if not options.halves_in_parallel:
        logging.getLogger(__name__).warning(
            "cfg_parallel: only GPU %s configured; the UNet keeps the batched CFG call", list(options.gpus))
        return {}
    gpus = {"cfg_parallel_gpus": ",".join(str(g) for g in options.gpus)} if options.device == "gpu" else {}
    return {"cfg_parallel": "true"} | gpus


def _place(source: Path, destination: Path) -> None:
    """Hard-links a weights folder where possible (no second copy on disk), else copies it."""
    if destination.exists():
        shutil.rmtree(destination)
    try:
        shutil.copytree(source, destination, copy_function=os.link)
    except OSError:
        shutil.copytree(source, destination, dirs_exist_ok=True)


PUBLISHED_VAE_SCALING_FACTOR = 0.18125  # ali-vilab/i2vgen-xl vae/config.json


def model_configs(options: ExportOptions, vae_scaling_factor: float) -> dict[str, str]:
    """The config.pbtxt text of every model, rendered from its contract and the export options
    (the weight fingerprints come with ``options.cache``)."""
    options = unet_repository.resolve(options)
    kind = "KIND_GPU" if options.device == "gpu" else "KIND_CPU"
    configs = {}
    for contract in contracts.COMPONENTS:
        if options.per_gpu_components:
            copies = {contracts.gpu_model_name(contract.name, gpu): (gpu,) for gpu in options.gpus}
        else:
            copies = {contract.name: options.gpus}
        for name, gpus in copies.items():
            count = options.component_instances
            if contract is contracts.UNET and options.halves_in_parallel and options.device != "gpu":
                count = max(count, 2)  # one CPU instance per half; on GPUs the count is per GPU already
            group = InstanceGroup(kind, count, gpus)
            configs[name] = _component_config(contract, options, group, name)
    entry_parameters = (
        options.settings.as_parameters()
        | options.cache.as_parameters()
        | {"vae_scaling_factor": str(vae_scaling_factor)}
        | ({"components_per_gpu": "true"} if options.per_gpu_components else {})
        | _cfg_parallel_parameters(options)
    )
    for contract in contracts.ENTRY_MODELS:
        group = InstanceGroup(kind, options.entry_instances, options.gpus)
        configs[contract.name] = render_config(
            contract, instance_group=group, parameters=entry_parameters, queue=options.queue
        )
    return configs


def _component_config(contract: contracts.ModelContract, options: ExportOptions, group: InstanceGroup,
                      name: str) -> str:
    if contract is contracts.UNET and options.unet_runtime != "torch":
        return unet_repository.unet_config(options, group, name)
    return render_config(contract, instance_group=group, parameters=component_parameters(contract, options),
                         queue=component_queue(options), name=name)


def component_parameters(contract: contracts.ModelContract, options: ExportOptions) -> dict[str, str]:
    """The config parameters of a component served by the python backend (its PyTorch runtime)."""
    parameters = {"dtype": options.dtype} | ComponentLimits.from_settings(options.settings).as_parameters()
    vae_compile_mode = {contracts.VAE_DECODER: options.vae_decoder_compile_mode,
                        contracts.VAE_ENCODER: options.vae_encoder_compile_mode}.get(contract, "")
    if options.warmup_shapes and (contract in (contracts.UNET, contracts.VAE_DECODER) or vae_compile_mode):
        parameters["warmup_shapes"] = options.warmup_shapes
    if contract is contracts.UNET:
        parameters |= options.unet_options.as_parameters()
        parameters["dtype"] = unet_dtype(options.unet_options, options.dtype)  # FP8 runs in bfloat16
    if vae_compile_mode:
        parameters["compile_mode"] = vae_compile_mode
    if options.compile_cache_dir and (contract is contracts.UNET or "compile_mode" in parameters):
        parameters["compile_cache_dir"] = options.compile_cache_dir
    if contract is contracts.VAE_DECODER:
        parameters["memory_budget_bytes"] = str(options.decode_memory_budget_bytes)
        parameters["tile_above_pixels"] = str(options.decode_tile_above_pixels)
    return parameters


def component_queue(options: ExportOptions) -> QueuePolicy:
    """A component's bounded queue: room for every call the orchestrators can have out at once (two per
    entry instance with CFG-parallel halves, for each of the two entry models), so only calls from
    outside the server, which the component refuses at once, can find it full."""
    return QueuePolicy(max_queue_size=max(options.queue.max_queue_size, 4 * options.entry_instances))


def write_source_configs(source_repository: Path = SOURCE_REPOSITORY) -> None:
    """Writes the committed model_repository/*/config.pbtxt: CPU defaults for the published weights."""
    for name, text in model_configs(ExportOptions(), PUBLISHED_VAE_SCALING_FACTOR).items():
        (source_repository / name / "config.pbtxt").write_text(text)


def build_repository(
    checkpoint: Path,
    output: Path,
    options: ExportOptions | None = None,
    source_repository: Path = SOURCE_REPOSITORY,
) -> Path:
    """Copies the adapters, places the weights and writes each model's config into ``output``
    (``options``: ExportOptions' defaults where None)."""
    options = options or ExportOptions()
    checkpoint, output = Path(checkpoint), Path(output)
    missing = [f for f in ("model_index.json", "scheduler", "vae", "unet") if not (checkpoint / f).exists()]
    if missing:
        raise FileNotFoundError(f"{checkpoint} is not a diffusers I2VGen-XL checkpoint: missing {missing}")
    vae_config = json.loads((checkpoint / "vae" / "config.json").read_text())
    # Cache keys carry these, so entries computed with other weights are never served.
    options = dataclasses.replace(options, cache=dataclasses.replace(
        options.cache,
        image_fingerprint=fingerprint_files(*(checkpoint / f for f in ("image_encoder", "feature_extractor", "vae"))),
        prompt_fingerprint=fingerprint_files(checkpoint / "text_encoder", checkpoint / "tokenizer"),
    ))
    weights = {name: cls.weight_folders for name, cls in COMPONENT_CLASSES.items()}
    weights |= {contract.name: ("scheduler",) for contract in contracts.ENTRY_MODELS}
    built_unet = None  # an ONNX graph or engine is made once and linked into the other GPUs' copies
    for name, config in model_configs(options, vae_config["scaling_factor"]).items():
        component = contracts.component_of(name)
        version = output / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        if component == contracts.UNET.name:
            unet_repository.remove_runtime_files(version)  # switching runtimes leaves nothing stale
        if component == contracts.UNET.name and options.unet_runtime != "torch":
            if built_unet is None:
                unet_repository.write_unet(checkpoint, output / name, options, source_repository)  # graph or engine
                built_unet = version
            else:
                _place(built_unet, version)
        else:
            for folder in weights[component]:
                _place(checkpoint / folder, version / folder)
            shutil.copy2(source_repository / component / "1" / "model.py", version / "model.py")
        (output / name / "config.pbtxt").write_text(config)
    return output


if __name__ == "__main__":  # `make configs`
    write_source_configs()
