"""The five components called in this process, behind the interface the pipeline calls Triton's through."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from openspeedy.components import Component
from openspeedy.contract_checks import check_tensors
from openspeedy.contracts import ModelContract


class LocalModels:
    """Calls components in this process, holding both sides to the contracts like Triton does."""

    def __init__(self, components: Mapping[str, Component]):
        self.components = dict(components)
        self.calls: dict[str, int] = {name: 0 for name in self.components}

    def __call__(self, contract: ModelContract, inputs: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        check_tensors(contract, "inputs", inputs)
        outputs = self.components[contract.name].infer(inputs)
        check_tensors(contract, "outputs", outputs)
        self.calls[contract.name] += 1
        return outputs

    def call_many(self, contract: ModelContract, inputs: list[Mapping[str, Any]]) -> list[Mapping[str, torch.Tensor]]:
        return [self(contract, one) for one in inputs]  # one process, one device: nothing to overlap
