"""Triton adapter for `i2vgen_xl`: the pipeline lives in openspeedy.pipeline."""

from openspeedy.serving.entry_model import EntryModel as TritonPythonModel  # noqa: F401
