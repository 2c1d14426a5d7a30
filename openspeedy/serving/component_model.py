"""Triton model for one neural component (text_encoder, image_encoder, vae_encoder, unet, vae_decoder)."""

from __future__ import annotations

from pathlib import Path

import torch

from openspeedy.component_limits import ComponentLimits
from openspeedy.components import load_component
from openspeedy.serving.caller_key import NotTheOrchestrator, carries_key, server_key
from openspeedy.serving.metrics import LoadMetric
from openspeedy.serving.triton_io import (
    error_response,
    forward_logs_to_triton,
    instance_device,
    model_parameters,
    pb_utils,
    read_inputs,
    to_triton,
)


def component_model(model_name: str) -> type:
    """The TritonPythonModel class serving component ``model_name`` from its version directory."""

    class ComponentModel:
        def initialize(self, args):
            forward_logs_to_triton()  # the load's own lines: what the UNet's recipe did, the compile caches
            parameters = model_parameters(args)
            version_dir = Path(args["model_repository"]) / args["model_version"]
            self.component = load_component(
                model_name, version_dir, instance_device(args), parameters.get("dtype", "float32"), parameters
            )
            self.limits = ComponentLimits.from_parameters(parameters)
            self.model_name = args["model_name"]
            server_key()  # made or read now: a problem with it shows at load, not at the first request
            self.load_metric = LoadMetric(args["model_name"], args["model_instance_name"])

        def execute(self, requests):
            responses = []
            for request in requests:
                try:
                    # Before reading any input: a call from outside the server costs nothing more.
                    if not carries_key(request.parameters()):
                        raise NotTheOrchestrator(self.model_name, pb_utils.TritonError.UNSUPPORTED)
                    inputs = read_inputs(request, self.component.contract)
                    self.limits.check(self.component.contract, inputs)
                    outputs = self.component.infer(inputs)
                    responses.append(
                        pb_utils.InferenceResponse(output_tensors=[to_triton(n, t) for n, t in outputs.items()])
                    )
                except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
                    if isinstance(error, torch.OutOfMemoryError):
                        torch.cuda.empty_cache()  # give back what the failed request held before the next
                    responses.append(error_response(error))
            return responses

    ComponentModel.__name__ = ComponentModel.__qualname__ = f"{model_name}_model"
    return ComponentModel
