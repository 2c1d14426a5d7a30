"""Triton adapter for `unet`: the component lives in openspeedy.components."""

from openspeedy.serving.component_model import component_model

TritonPythonModel = component_model("unet")
