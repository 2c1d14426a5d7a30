"""The container's way in: docker/entrypoint.sh runs `openspeedy serve` (configured by OPENSPEEDY_* variables,
as the image and the chart do), which restricts the admin APIs to its key, and `openspeedy probe ready` tells
the truth about every model. A model that cannot come back makes the launcher exit, so the pod restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from openspeedy.client import Client
from openspeedy.server import ADMIN_KEY_HEADER
from openspeedy.watchdog import stub_processes
from tests.helpers import encode, free_port, random_image

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
ADMIN_KEY = "launcher-test-admin-key-0123456789"
IMAGE = encode(random_image(64, 48, seed=61))

_FAILING_UNET = '''
raise RuntimeError("this unet cannot load (test)")
'''


def post(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def get(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError) as error:
        return type(error).__name__


def probe(url: str, repository: Path, what: str = "ready") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openspeedy.probe", what, "--url", url, "--model-repository",
                           str(repository)], capture_output=True, text=True, timeout=60)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def launched(tiny_repository, tmp_path):
    """The entrypoint, as the container runs it, on a copy of the tiny repository (the test breaks a model)."""
    repository = tmp_path / "models"
    shutil.copytree(tiny_repository, repository, copy_function=os.link)
    ports = {"HTTP": free_port(), "GRPC": free_port(), "METRICS": free_port()}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OPENSPEEDY_MODEL_REPOSITORY=str(repository), OPENSPEEDY_ADMIN_KEY=ADMIN_KEY,
               **{f"OPENSPEEDY_{name}_PORT": str(port) for name, port in ports.items()})
    log = open(tmp_path / "launcher.log", "w+")
    process = subprocess.Popen([str(ENTRYPOINT), "--exit-timeout-secs", "5", "--", "--log-info=true"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['HTTP']}"
    try:
        wait_for(lambda: process.poll() is not None or get(f"{url}/v2/health/ready") == 200, 300, "the server")
        assert process.poll() is None, (tmp_path / "launcher.log").read_text()
        yield process, url, repository, tmp_path / "launcher.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def unet_executions(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v2/models/unet/stats", timeout=10) as response:
        return int(json.loads(response.read())["model_stats"][0].get("execution_count", 0))


def long_request(launcher: subprocess.Popen) -> None:
    server = tritonserver_of(launcher)
    grpc = next(a for a in server.cmdline() if a.startswith("--grpc-port=")).split("=")[1]
    try:
        with Client(f"127.0.0.1:{grpc}", "grpc", timeout_s=300) as client:
            client.generate(IMAGE, "a long one", num_frames=8, height=64, width=64, num_inference_steps=100, seed=1)
    except Exception:  # noqa: BLE001 - the request fails with its stub; what matters is the launcher's exit
        pass


def tritonserver_of(launcher: subprocess.Popen) -> psutil.Process:
    (server,) = [c for c in psutil.Process(launcher.pid).children() if "tritonserver" in c.name()]
    return server


def test_entrypoint_serves_with_the_watchdog_restricted_admin_and_truthful_probes(launched):
    process, url, repository, log = launched
    server = tritonserver_of(process)
    command = server.cmdline()
    assert "--log-info=true" in command, "the arguments after -- reach tritonserver"
    assert "--model-control-mode=explicit" in command and "--exit-timeout-secs=5" in command
    assert any(a.startswith("--http-restricted-api=model-repository,") for a in command)
    assert "<admin key>" in Path(log).read_text() and ADMIN_KEY not in Path(log).read_text()

    ready = probe(url, repository)
    assert ready.returncode == 0, ready.stderr
    assert "7 models ready" in ready.stdout

    # Anonymous: refused, everything keeps serving.
    assert post(f"{url}/v2/repository/models/unet/unload") == 403
    assert probe(url, repository).returncode == 0

    # The operator, with the Secret's key: the unload happens, and the probe names the model.
    assert post(f"{url}/v2/repository/models/unet/unload", {ADMIN_KEY_HEADER: ADMIN_KEY}) == 200
    wait_for(lambda: get(f"{url}/v2/models/unet/ready") != 200, 60, "unet to unload")
    unready = probe(url, repository)
    assert unready.returncode == 1 and "model 'unet' not ready" in unready.stderr, unready.stderr
    assert probe(url, repository, "live").returncode == 1

    assert post(f"{url}/v2/repository/models/unet/load", {ADMIN_KEY_HEADER: ADMIN_KEY}) == 200
    assert probe(url, repository).returncode == 0

    # SIGTERM: a clean stop of the launcher and its server.
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, Path(log).read_text()[-3000:]
    assert not server.is_running()


def test_launcher_exits_when_a_model_cannot_come_back(launched):
    """A stub dies and every reload fails: the launcher exits non-zero (the container restarts) instead of
    serving a model that fails every request."""
    process, url, repository, log = launched
    model_file = repository / "unet" / "1" / "model.py"
    model_file.unlink()  # a hard link to the session's repository: never write through it
    model_file.write_text(_FAILING_UNET)
    server = tritonserver_of(process)
    (stub,) = stub_processes(server.pid, repository)["unet"]
    # Killed in the middle of a request: a stub that dies idle is handled by Triton on its own (reaped).
    worker = threading.Thread(target=long_request, args=(process,), daemon=True)
    worker.start()
    wait_for(lambda: unet_executions(url) >= 2, 120, "the unet to start working")
    (region,) = [arg for arg in stub.cmdline() if arg.startswith("triton_python_backend_shm_region_")]
    stub.kill()
    assert process.wait(180) == 1, Path(log).read_text()[-3000:]
    assert not (Path("/dev/shm") / region).exists(), "the dead stub's shared memory outlived the server"
    text = Path(log).read_text()
    assert "giving up: model 'unet' lost a python backend stub and 3 reloads in a row failed" in text, text[-3000:]
    assert not server.is_running()
