"""Helpers the tests import: images to send, free ports, config.pbtxt parsing against a contract."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import PIL.Image

from openspeedy import contracts

ROOT = Path(__file__).resolve().parents[1]  # the repository
SOURCE_REPOSITORY = ROOT / "model_repository"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode(image: PIL.Image.Image, format: str = "PNG", **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_options)
    return buffer.getvalue()


def random_image(width: int = 120, height: int = 80, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        return image.quantize(colors=16)
    return image.convert(mode)


def parse(path: Path):
    """A config.pbtxt as Triton's ModelConfig protobuf (tritonclient ships its definition)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(config_tensors, is_input: bool):
    from tritonclient.grpc import model_config_pb2

    result = {}
    for tensor in config_tensors:
        datatype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
        result[tensor.name] = (
            "BYTES" if datatype == "STRING" else datatype,
            tuple(tensor.dims),
            tensor.optional if is_input else False,
        )
    return result


def declared(specs, is_input: bool = True):
    """As ``tensors`` reads a config: Triton marks inputs optional, never outputs (an optional output is
    one a model returns only when asked)."""
    return {spec.name: (spec.datatype, spec.dims, spec.optional and is_input) for spec in specs}


def assert_agrees(config, contract: contracts.ModelContract) -> None:
    assert config.name == contract.name
    assert config.max_batch_size == 0
    assert tensors(config.input, True) == declared(contract.inputs)
    assert tensors(config.output, False) == declared(contract.outputs, is_input=False)
    assert config.model_transaction_policy.decoupled == contract.decoupled
