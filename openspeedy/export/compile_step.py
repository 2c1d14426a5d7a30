"""Export's compile step: each model that compiles is loaded here, on the export's device, with the
parameters its config carries, and warmed up at its warm-up shapes; what torch.compile made goes into the
model's version folder (openspeedy.compile_artifacts), and the served model loads it before it compiles
anything. A fresh replica then starts without compiling. The artifacts hold for one GPU architecture and
one torch build: export on the kind of GPU that serves, with the image that serves; elsewhere the model
compiles at load, and its log line says why."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import torch

from openspeedy import compile_artifacts, contracts
from openspeedy.components import load_component
from openspeedy.export.options import ExportOptions
from openspeedy.export.repository import component_parameters


def export_device(options: ExportOptions) -> torch.device:
    if options.device != "gpu":
        return torch.device("cpu")
    return torch.device("cuda", options.gpus[0] if options.gpus else 0)


def write_compile_artifacts(output: Path, options: ExportOptions) -> dict[str, int]:
    """Compiles every model of ``output`` that compiles at its warm-up shapes and writes its artifacts;
    the entries written, by model."""
    device = export_device(options)
    written: dict[str, int] = {}
    for contract in contracts.COMPONENTS:
        if contract is contracts.UNET and options.unet_runtime != "torch":
            continue  # an ONNX graph or TensorRT engine is compiled already
        parameters = component_parameters(contract, options)
        if not (parameters.get("compile_mode") and parameters.get("warmup_shapes")):
            continue
        names = ([contracts.gpu_model_name(contract.name, gpu) for gpu in options.gpus]
                 if options.per_gpu_components else [contract.name])
        version = output / names[0] / "1"
        parameters.pop("compile_cache_dir", None)
        # Compiled in empty caches, so that every entry is made and recorded here rather than read from
        # what this machine compiled before (a local cache hit may not be recorded).
        with tempfile.TemporaryDirectory(prefix="openspeedy-compile-") as caches, mock.patch.dict(
                os.environ, TORCHINDUCTOR_CACHE_DIR=caches, TRITON_CACHE_DIR=os.path.join(caches, "triton")):
            with compile_artifacts.recording():
                component = load_component(contract.name, version, device, parameters["dtype"], parameters)
                del component
                written[contract.name] = compile_artifacts.save(version, device)
        for name in names[1:]:
            for file in (compile_artifacts.ARTIFACTS_FILE, compile_artifacts.HEADER_FILE):
                shutil.copy2(version / file, output / name / "1" / file)
        print(f"{contract.name}: {written[contract.name]} compile cache entries written to {version}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return written
