"""Triton ``config.pbtxt`` text rendered from a model's contract, so the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from openspeedy.contracts import ModelContract, TensorSpec


@dataclass(frozen=True)
class InstanceGroup:
    kind: str = "KIND_CPU"  # or KIND_GPU
    count: int = 1
    gpus: Sequence[int] = field(default_factory=tuple)


@dataclass(frozen=True)
class QueuePolicy:
    """Admission control for an entry model: a bounded queue, so overload is refused at once with
    UNAVAILABLE ("Exceeds maximum queue size") instead of waiting without end. Triton keeps its queue in
    the dynamic batcher, which also serves models of max_batch_size 0 (one request per execution)."""

    max_queue_size: int = 8
    priority_levels: int = 2  # clients may send priority 1 (high) or 2 (default)
    default_timeout_us: int = 0  # 0: a queued request waits until served


def flag(parameters: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean model config parameter (config parameters are strings)."""
    return parameters.get(name, str(default)).lower() in ("1", "true", "yes", "on")


def cfg_parallel_gpus(parameters: Mapping[str, str], own_gpu: int) -> tuple[int, int] | None:
    """The GPUs of the two CFG-parallel halves for an orchestrator on ``own_gpu``: its own first, then the
    next one listed in ``cfg_parallel_gpus`` (so each orchestrator keeps one half on its GPU); None where
    fewer than two GPUs are listed or its own is not among them (the batched call then)."""
    gpus = [int(g) for g in parameters.get("cfg_parallel_gpus", "").split(",") if g.strip()]
    if len(gpus) < 2 or own_gpu not in gpus:
        return None
    return own_gpu, gpus[(gpus.index(own_gpu) + 1) % len(gpus)]


def _tensor(spec: TensorSpec, is_input: bool) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    optional = " optional: true" if is_input and spec.optional else ""
    # Triton's config calls BYTES "TYPE_STRING"; everywhere else (protocol, clients) it is "BYTES".
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return f'  {{ name: "{spec.name}" data_type: TYPE_{datatype} dims: [ {dims} ]{optional} }}'


def render_config(
    contract: ModelContract,
    *,
    backend: str = "python",
    instance_group: InstanceGroup = InstanceGroup(),
    parameters: Mapping[str, str] | None = None,
    queue: QueuePolicy | None = None,
    name: str | None = None,
) -> str:
    """config.pbtxt text of ``contract``'s model (named ``name``: a per-GPU copy, else the contract's)."""
    lines = [
        f'name: "{name or contract.name}"',
        f'backend: "{backend}"' if backend != "tensorrt_plan" else 'platform: "tensorrt_plan"',
        "max_batch_size: 0",
        "input [",
        ",\n".join(_tensor(spec, True) for spec in contract.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(spec, False) for spec in contract.outputs),
        "]",
    ]
    if contract.decoupled:
        lines.append("model_transaction_policy { decoupled: true }")
    if queue is not None:
        lines.append(
            "dynamic_batching { "
            f"priority_levels: {queue.priority_levels} default_priority_level: {queue.priority_levels} "
            f"default_queue_policy {{ max_queue_size: {queue.max_queue_size} "
            f"default_timeout_microseconds: {queue.default_timeout_us} allow_timeout_override: true }} }}"
        )
    gpus = f" gpus: [ {', '.join(str(g) for g in instance_group.gpus)} ]" if instance_group.gpus else ""
    lines.append(f"instance_group [ {{ kind: {instance_group.kind} count: {instance_group.count}{gpus} }} ]")
    all_parameters = dict(parameters or {})
    if backend == "python":
        # Let GPU tensors from BLS callers reach the model as they are instead of through host memory.
        all_parameters.setdefault("FORCE_CPU_ONLY_INPUT_TENSORS", "no")
    for key in sorted(all_parameters):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{all_parameters[key]}" }} }}')
    return "\n".join(lines) + "\n"
