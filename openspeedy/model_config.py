"""Triton ``config.pbtxt`` text rendered from a model's contract, so the two can never disagree (at export;
openspeedy.model_parameters reads the parameters at run time)."""

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
    """Admission control: a bounded queue, so overload is refused at once with UNAVAILABLE ("Exceeds
    maximum queue size") instead of waiting without end. Triton keeps its queue in the dynamic batcher,
    which also serves models of max_batch_size 0 (one request per execution).

    Triton orders a queue by the priority a request names before any model sees the request, so any
    client could put itself first. Priority is therefore off unless the operator turns it on
    (``priority_levels`` 2, for deployments whose clients are all trusted or whose front end sets it):
    then priority 1 is served before the default 2 and queues at most ``high_priority_queue_size``."""

    max_queue_size: int = 8
    priority_levels: int = 0  # 0: one queue in arrival order, whatever priority a request names
    high_priority_queue_size: int = 1
    default_timeout_us: int = 0  # 0: a queued request waits until served

    def __post_init__(self):
        if self.priority_levels not in (0, 2):
            raise ValueError(f"priority_levels must be 0 (off) or 2 (1 before the default 2), "
                             f"not {self.priority_levels}")

    def render(self) -> str:
        """The config's ``dynamic_batching`` block."""
        def policy(size: int) -> str:
            return (f"{{ max_queue_size: {size} default_timeout_microseconds: {self.default_timeout_us} "
                    "allow_timeout_override: true }")

        priority = ""
        if self.priority_levels:
            priority = (f"priority_levels: {self.priority_levels} default_priority_level: {self.priority_levels} "
                        f"priority_queue_policy {{ key: 1 value: {policy(self.high_priority_queue_size)} }} ")
        return f"dynamic_batching {{ {priority}default_queue_policy {policy(self.max_queue_size)} }}"


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
        lines.append(queue.render())
    gpus = f" gpus: [ {', '.join(str(g) for g in instance_group.gpus)} ]" if instance_group.gpus else ""
    lines.append(f"instance_group [ {{ kind: {instance_group.kind} count: {instance_group.count}{gpus} }} ]")
    all_parameters = dict(parameters or {})
    if backend == "python":
        # Let GPU tensors from BLS callers reach the model as they are instead of through host memory.
        all_parameters.setdefault("FORCE_CPU_ONLY_INPUT_TENSORS", "no")
    for key in sorted(all_parameters):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{all_parameters[key]}" }} }}')
    return "\n".join(lines) + "\n"
