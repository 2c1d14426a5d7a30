"""Shared fixtures: the tiny checkpoint and repository, in-process components, a real tritonserver."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from openspeedy.components import WEIGHT_FOLDERS, load_component
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.pipeline import I2VGenXL, LocalModels


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("repository") / "models"
    return build_repository(tiny_checkpoint, output, ExportOptions(settings=TINY_SETTINGS))


@pytest.fixture(scope="session")
def local_models(tiny_checkpoint) -> LocalModels:
    return LocalModels({name: load_component(name, tiny_checkpoint) for name in WEIGHT_FOLDERS})


@pytest.fixture(scope="session")
def local_pipeline(tiny_checkpoint, local_models) -> I2VGenXL:
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    return I2VGenXL(local_models, scheduler, scaling)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def triton(tiny_repository, tmp_path_factory):
    """A real tritonserver on the tiny repository (CPU), on free loopback ports, stopped at the end."""
    from openspeedy.server import ServerOptions, TritonServer

    options = ServerOptions(tiny_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    log = Path("build/test-logs/triton.log")
    log.unlink(missing_ok=True)
    server = TritonServer(options, log_path=log).start()
    yield server
    assert server.stop() == 0, f"tritonserver did not stop cleanly; see {log}"


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


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence."""

    def __init__(self, directory: Path):
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make test installs it with apt-get)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
        )
        import redis
        import time

        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()
