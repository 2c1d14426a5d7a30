"""Triton adapter for `vae_encoder`: the component lives in openspeedy.components."""

from openspeedy.serving.component_model import component_model

TritonPythonModel = component_model("vae_encoder")
