"""Moving tensors between Triton's python backend and torch, and BLS sub-requests by contract."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Mapping

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # only importable inside a Triton python backend stub
from torch.utils.dlpack import to_dlpack

from openspeedy import contracts
from openspeedy.contracts import ModelContract, TensorSpec
from openspeedy.errors import InvalidInput
from openspeedy.serving import caller_key


def instance_device(args: Mapping[str, str]) -> torch.device:
    """The device Triton assigned to this model instance (KIND_GPU -> cuda:<model_instance_device_id>)."""
    if args["model_instance_kind"] == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")


class TritonLogHandler(logging.Handler):
    """The package's log records (the UNet's recipe lines, the compile caches' lines) in Triton's own log,
    with its levels and timestamps: a stub's Python logging has no handler and would drop INFO."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def forward_logs_to_triton() -> None:
    """Sends the ``openspeedy`` loggers' records, INFO and above, to Triton's log (once a process)."""
    logger = logging.getLogger("openspeedy")
    if not any(isinstance(handler, TritonLogHandler) for handler in logger.handlers):
        logger.addHandler(TritonLogHandler())
        logger.setLevel(logging.INFO)


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def to_torch(tensor: "pb_utils.Tensor", spec: TensorSpec) -> Any:
    """A Triton tensor as torch (zero-copy through DLPack), or a numpy object array for BYTES."""
    if spec.datatype == "BYTES":
        return tensor.as_numpy()
    return torch.from_dlpack(tensor.to_dlpack())


def to_triton(name: str, value: Any) -> "pb_utils.Tensor":
    if isinstance(value, torch.Tensor):
        return pb_utils.Tensor.from_dlpack(name, to_dlpack(value.contiguous()))
    return pb_utils.Tensor(name, np.asarray(value))


def read_inputs(request: "pb_utils.InferenceRequest", contract: ModelContract, as_numpy: bool = False) -> dict:
    inputs = {}
    for spec in contract.inputs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is not None:
            inputs[spec.name] = tensor.as_numpy() if as_numpy else to_torch(tensor, spec)
    return inputs


def error_response(error: Exception) -> "pb_utils.InferenceResponse":
    """An error response: bad input is the client's (INVALID_ARG); an error that names its own Triton code
    (``triton_code``, e.g. a cancelled request) keeps it; anything else is ours (INTERNAL)."""
    if isinstance(error, InvalidInput):
        code, message = pb_utils.TritonError.INVALID_ARG, str(error)
    elif getattr(error, "triton_code", None) is not None:
        code, message = error.triton_code, str(error)
    else:
        code, message = pb_utils.TritonError.INTERNAL, f"{type(error).__name__}: {error}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class ComponentError(RuntimeError):
    pass


def _gpu(device: torch.device | None) -> int | None:
    return (device.index or 0) if device is not None and device.type == "cuda" else None


def _request(contract: ModelContract, inputs: Mapping[str, Any], device: torch.device | None, model_name: str,
             ) -> "pb_utils.InferenceRequest":
    """A BLS request whose outputs come to ``device`` (unless the contract sends them to the host):
    without a preferred memory their placement is Triton's choice, host memory in some releases
    (a round trip per denoising step)."""
    gpu = _gpu(device)
    options = {}
    if gpu is not None and not contract.outputs_to_host:
        options["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, gpu)
    return pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=list(contract.outputs_for(inputs)),
        inputs=[to_triton(name, value) for name, value in inputs.items()],
        parameters={caller_key.PARAMETER: caller_key.server_key()},  # the components answer only this
        **options,
    )


def _outputs(contract: ModelContract, model_name: str, response: "pb_utils.InferenceResponse") -> dict[str, Any]:
    if response.has_error():
        raise ComponentError(f"model '{model_name}' failed: {response.error().message()}")
    outputs = {}
    for spec in contract.outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, spec.name)
        if tensor is None and spec.optional:
            continue  # an output the model computes only when asked (the UNet's DEEP_FEATURES)
        if tensor is None:
            raise ComponentError(f"model '{model_name}' returned no {spec.name}")
        outputs[spec.name] = to_torch(tensor, spec)
    return outputs


def bls_call(
    contract: ModelContract, inputs: Mapping[str, Any], device: torch.device | None = None, per_gpu: bool = False
) -> dict[str, Any]:
    """One synchronous BLS sub-request to a component model; raises ComponentError on its error.

    A caller on a GPU ``device`` asks for the outputs there. With ``per_gpu`` the request goes to the
    component's copy on the caller's GPU (contracts.gpu_model_name)."""
    gpu = _gpu(device)
    model_name = contracts.gpu_model_name(contract.name, gpu) if per_gpu else contract.name
    return _outputs(contract, model_name, _request(contract, inputs, device, model_name).exec())


class BlsCaller:
    """The orchestrator's ModelCaller inside Triton: ``bls_call`` for one call, ``call_many`` for the
    CFG-parallel halves, sent at once with ``async_exec`` and awaited together.

    ``half_gpus`` are the GPUs the halves run on, in order (the caller's own first); with ``per_gpu``
    half i goes to the component's copy on ``half_gpus[i]`` and its inputs are placed there first, else
    all halves go to the one model and Triton gives them to its free instances (one per GPU)."""

    def __init__(self, device: torch.device, per_gpu: bool = False, half_gpus: tuple[int, ...] = ()):
        self.device = device
        self.per_gpu = per_gpu
        self.half_gpus = half_gpus

    def __call__(self, contract: ModelContract, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return bls_call(contract, inputs, self.device, self.per_gpu)

    def call_many(self, contract: ModelContract, inputs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        names, requests = [], []
        for i, one in enumerate(inputs):
            gpu = self.half_gpus[i % len(self.half_gpus)] if self.half_gpus else None
            if self.per_gpu and gpu is not None:
                name = contracts.gpu_model_name(contract.name, gpu)
                one = {k: v.to(f"cuda:{gpu}") if isinstance(v, torch.Tensor) else v for k, v in one.items()}
            else:
                name = contract.name
            names.append(name)
            # Outputs come back to the caller's device, where the halves are joined.
            requests.append(_request(contract, one, self.device, name))
        responses = _run_concurrently(requests)
        return [_outputs(contract, name, response) for name, response in zip(names, responses)]


def _run_concurrently(requests: list["pb_utils.InferenceRequest"]) -> list["pb_utils.InferenceResponse"]:
    """Every request in flight at once; their responses in order.

    ``async_exec`` needs a running asyncio loop (it hands ``exec`` to the loop's executor threads).
    The entry models' ``execute`` is synchronous in both the plain and the decoupled model, so no loop
    runs in this thread and a private one serves these requests alone."""
    async def all_of():
        return await asyncio.gather(*(request.async_exec() for request in requests))

    return list(asyncio.run(all_of()))
