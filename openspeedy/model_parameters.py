"""Reading a model's config parameters at run time (Triton keeps them as strings); openspeedy.model_config
renders them at export."""

from __future__ import annotations

from typing import Mapping

# A parameter the watchdog changes on each reload of a model whose stub died (Triton reloads a model only
# when its config changed); every model accepts it and ignores it.
RELOAD_PARAMETER = "openspeedy_reload"


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


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """ "16x512x512,24x768x768" -> [(16, 512, 512), (24, 768, 768)]: video sizes to warm up for."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        frames, height, width = (int(n) for n in item.lower().split("x"))
        shapes.append((frames, height, width))
    return shapes
