"""Triton adapter for `vae_decoder`: the component lives in openspeedy.components."""

from openspeedy.serving.component_model import component_model

TritonPythonModel = component_model("vae_decoder")
