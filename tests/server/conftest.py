"""The servers these tests talk to: a real tritonserver on the tiny repository, and redis-server."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder talks to a server it starts: `-m "not server"` deselects them all.
    for item in items:
        if "tests/server/" in item.nodeid:
            item.add_marker(pytest.mark.server)


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


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence."""

    def __init__(self, directory: Path):
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
