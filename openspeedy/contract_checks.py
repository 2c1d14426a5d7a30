"""Whether tensors are what a model's contract declares: each required one there, with its dtype and rank.
The in-process pipeline checks every call with it, as Triton checks the served models'."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from openspeedy.contracts import ModelContract


def check_tensors(contract: ModelContract, specs: str, tensors: Mapping[str, Any]) -> None:
    """Raises ValueError unless ``tensors`` has every required tensor of the contract, with its dtype and rank."""
    declared = contract.inputs if specs == "inputs" else contract.outputs
    for spec in declared:
        if spec.name not in tensors:
            if spec.optional:
                continue
            raise ValueError(f"{contract.name}: missing {specs[:-1]} {spec.name}")
        value = tensors[spec.name]
        dtype = _dtype_of(value)
        if dtype != spec.numpy_dtype or not spec.shape_matches(tuple(value.shape)):
            raise ValueError(
                f"{contract.name}: {spec.name} must be {spec.datatype} {list(spec.dims)}, "
                f"got {dtype} {list(value.shape)}"
            )


def _dtype_of(value: Any) -> np.dtype:
    if isinstance(value, torch.Tensor):
        return np.dtype(str(value.dtype).removeprefix("torch."))
    return np.asarray(value).dtype
