"""Replacing submodules of a model in place (the UNet's temporal convolutions as 2D, GEGLUs)."""

from __future__ import annotations

from typing import Callable

from torch import nn


def replace_modules(model: nn.Module, matches: Callable[[nn.Module], bool],
                    replacement: Callable[[nn.Module], nn.Module]) -> int:
    """Replaces every submodule for which ``matches`` holds by ``replacement(submodule)``; returns how many.
    torch has no such function: torch.fx rewrites graphs, not the module tree that diffusers runs."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, replacement(child))
                replaced += 1
    return replaced
