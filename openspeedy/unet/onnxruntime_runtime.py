"""The `unet` component on onnxruntime: the exported ONNX graph (openspeedy/export/onnx_unet.py) in the python backend.

It serves the very graph TensorRT builds its engine from, so the graph is checked end to end on
machines without TensorRT. Same contract as the PyTorch `UNet`; chosen by the unet config parameter
``runtime: onnxruntime`` (see ``components.load_component``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from openspeedy import contracts

ONNX_FILE = "model.onnx"  # in the model version directory, its weights in model.onnx.data beside it


class OnnxRuntimeUNet:
    """One noise prediction for a (CFG) batch, computed by onnxruntime from ``<version>/model.onnx``."""

    contract = contracts.UNET_EXPORTED
    runtime = "onnxruntime"
    weight_folders = ()  # export writes the graph itself (openspeedy/export/unet_repository.py)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        import onnxruntime  # here, so that the PyTorch runtime never needs it

        # The graph is FP32 (its precision is fixed at export), so ``dtype`` has nothing to choose.
        self.device = device
        available = onnxruntime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in available:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        path = Path(directory) / options.get("onnx_file", ONNX_FILE)
        if not path.exists():
            raise FileNotFoundError(f"unet runtime onnxruntime: no ONNX graph at {path} (export with --unet-runtime "
                                    "onnxruntime)")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        names = tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs())
        if names != (self.contract.input_names, self.contract.output_names):
            raise ValueError(f"{path}: graph tensors {names} are not the unet contract's")

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        feeds = {
            spec.name: np.ascontiguousarray(torch.as_tensor(inputs[spec.name]).detach().cpu().numpy(),
                                            dtype=spec.numpy_dtype)
            for spec in self.contract.inputs
        }
        (noise,) = self.session.run(list(self.contract.output_names), feeds)
        return {"NOISE_PRED": torch.from_numpy(noise).to(self.device)}
