"""What export writes for each runtime of the `unet` model (openspeedy.unet.options.RUNTIMES), chosen with
``ExportOptions.unet_runtime`` (``--unet-runtime``).

- ``torch``: the diffusers weights, served by the python backend (openspeedy.unet.runtime.UNet).
- ``onnxruntime``: the exported ONNX graph in the version folder, served by the python backend
  (openspeedy.unet.onnxruntime_runtime); the config parameter ``runtime: onnxruntime`` selects it.
- ``tensorrt``: a TensorRT engine (``model.plan``) served by Triton's TensorRT backend; the ONNX graph
  it was built from stays beside the repository (``<repository>_unet_onnx/``) for rebuilds on other GPUs.

Every runtime keeps the `unet` name and contract, so the orchestrator never knows which one answers.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from openspeedy import contracts
from openspeedy.export.options import ExportOptions
from openspeedy.export.tensorrt_engine import PLAN_FILE, build_engine, require_tensorrt, tensorrt_config
from openspeedy.model_config import InstanceGroup, render_config
from openspeedy.unet.onnxruntime_runtime import ONNX_FILE
from openspeedy.unet.options import RUNTIMES


def resolve(options: ExportOptions) -> ExportOptions:
    """Checks the runtime choice; for TensorRT, narrows the request limits to the engine's profile."""
    if options.unet_runtime not in RUNTIMES:
        raise ValueError(f"unet_runtime must be one of {RUNTIMES}, got {options.unet_runtime!r}")
    if options.unet_runtime == "tensorrt":
        if options.device != "gpu":
            raise ValueError("unet_runtime tensorrt: a TensorRT engine runs on GPUs, export with device gpu")
        return dataclasses.replace(options, settings=options.unet_profile.restrict(options.settings))
    return options


def unet_config(options: ExportOptions, instance_group: InstanceGroup, name: str | None = None) -> str:
    """config.pbtxt of `unet` for the onnxruntime and tensorrt runtimes (torch: the common rendering)."""
    if options.unet_runtime == "onnxruntime":
        # The graph is FP32 whatever ``options.dtype`` says: its precision is fixed at export.
        from openspeedy.component_limits import ComponentLimits
        from openspeedy.export.repository import component_queue

        parameters = ({"dtype": "float32", "runtime": "onnxruntime"}
                      | ComponentLimits.from_settings(options.settings).as_parameters())
        return render_config(contracts.UNET_EXPORTED, instance_group=instance_group, parameters=parameters,
                             queue=component_queue(options), name=name)
    if options.unet_runtime == "tensorrt":
        return tensorrt_config(instance_group, name)
    raise ValueError(f"unet_config is for the onnxruntime and tensorrt runtimes, not {options.unet_runtime!r}")


def onnx_directory(output: Path) -> Path:
    """Where the TensorRT runtime keeps the ONNX graph of the repository ``output`` (outside it)."""
    return output.parent / f"{output.name}_unet_onnx"


def remove_runtime_files(version: Path) -> None:
    """Empties a `unet` version folder of every runtime's files, so a re-export that switches the
    runtime leaves nothing stale (a 3 GB engine or ONNX graph that nothing loads)."""
    for stale in (version / "unet", version / "model.py", version / ONNX_FILE, version / (ONNX_FILE + ".data"),
                  version / PLAN_FILE):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)


def write_unet(checkpoint: Path, model_directory: Path, options: ExportOptions, source_repository: Path) -> None:
    """Fills ``model_directory/1``, emptied by remove_runtime_files, for the onnxruntime or tensorrt runtime."""
    from openspeedy.export.onnx_unet import export_unet  # torch and diffusers only where a graph is made

    version = model_directory / "1"
    if options.unet_runtime == "onnxruntime":
        export_unet(checkpoint / "unet", version / ONNX_FILE)
        shutil.copy2(source_repository / "unet" / "1" / "model.py", version / "model.py")
    elif options.unet_runtime == "tensorrt":
        require_tensorrt()  # before the export, which takes minutes for the full-size model
        graph = export_unet(checkpoint / "unet", onnx_directory(model_directory.parent) / ONNX_FILE)
        build_engine(graph, version / PLAN_FILE, options.unet_profile)
    else:
        raise ValueError(f"write_unet is for the onnxruntime and tensorrt runtimes, not {options.unet_runtime!r}")
