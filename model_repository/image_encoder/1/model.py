"""Triton adapter for `image_encoder`: the component lives in openspeedy.components."""

from openspeedy.serving.component_model import component_model

TritonPythonModel = component_model("image_encoder")
