"""Triton adapter for `i2vgen_xl_stream` (decoupled, gRPC streaming): the pipeline lives in openspeedy.pipeline."""

from openspeedy.serving.entry_model import StreamEntryModel as TritonPythonModel  # noqa: F401
