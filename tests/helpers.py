"""Helpers the tests import: images to send, free ports, a port forwarder, config.pbtxt parsing against a
contract, the skip mark of tests that need a QuACK kernel, calls into diffusers' UNet."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from pathlib import Path

import numpy as np
import PIL.Image

from openspeedy import contracts
from openspeedy.server import free_loopback_port

ROOT = Path(__file__).resolve().parents[1]  # the repository
SOURCE_REPOSITORY = ROOT / "model_repository"


free_port = free_loopback_port


class PortForwarder:
    """Forwards the connections to a local port to ``target`` (host, port): a server that appears at an
    address only once the test says so. The standard library has no forwarder, hence these lines."""

    def __init__(self, port: int, target: tuple[str, int]):
        self.target, self.sockets = target, []
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the target refuses: this client sees a closed connection, the next may not
                client.close()
                continue
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            sock.close()

    def __enter__(self) -> PortForwarder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def needs_quack_kernel(kernel_unavailable, kernel: str):
    """Skips a test where ``kernel`` (a QuACK kernel, with its module's ``kernel_unavailable``) cannot run
    on this machine's GPU in float16, saying why."""
    import pytest
    import torch

    if not torch.cuda.is_available():
        reason = "needs a CUDA GPU"
    else:
        why = kernel_unavailable(torch.device("cuda"), torch.float16)
        reason = None if why is None else f"{kernel} cannot run: {why}"
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def diffusers_call(unet, inputs):
    """diffusers' UNet forward on the `unet` contract's inputs: the noise prediction."""
    return unet(inputs["SAMPLE"], inputs["TIMESTEP"], fps=inputs["FPS"], image_latents=inputs["IMAGE_LATENTS"],
                image_embeddings=inputs["IMAGE_EMBEDDINGS"], encoder_hidden_states=inputs["ENCODER_HIDDEN_STATES"],
                return_dict=False)[0]


def forward_arguments(inputs):
    """The `unet` contract's inputs in the order of the staged forward's and feature reuse's arguments."""
    return (inputs["SAMPLE"], inputs["TIMESTEP"], inputs["FPS"], inputs["IMAGE_LATENTS"], inputs["IMAGE_EMBEDDINGS"],
            inputs["ENCODER_HIDDEN_STATES"])


class ConvInRows:
    """Counts the rows a UNet's input convolution sees (frames x CFG rows computed)."""

    def __init__(self, unet):
        self.rows = []
        unet.conv_in.register_forward_hook(lambda _m, args, _out: self.rows.append(args[0].shape[0]))
