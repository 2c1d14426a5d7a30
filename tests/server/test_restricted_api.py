"""Triton's admin protocols on a server started by the launcher: refused without the admin key over HTTP and
gRPC, so an anonymous client can neither unload a model nor register shared memory, nor change where the
server writes traces and logs; inference, health, metadata, model config and statistics stay open."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openspeedy.client import Client
from openspeedy.server import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER
from openspeedy.watchdog import stub_processes
from tests.helpers import encode, random_image

pytestmark = pytest.mark.server

IMAGE = encode(random_image(64, 48, seed=41))
QUICK = dict(num_frames=2, height=32, width=32, num_inference_steps=2, seed=3)
MODELS = ("i2vgen_xl", "i2vgen_xl_stream", "text_encoder", "image_encoder", "vae_encoder", "unet", "vae_decoder")


def http(server, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = None if body is None and method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_serving(server) -> None:
    for model in MODELS:
        assert http(server, "GET", f"/v2/models/{model}/ready")[0] == 200, f"{model} is not ready"
    with Client(server.grpc_url, "grpc", timeout_s=120) as client:
        assert client.generate(IMAGE, "still here", **QUICK).frames.shape == (2, 32, 32, 3)


# Each admin protocol, by a request that would change the server (or list its repository) if admitted.
HTTP_ADMIN_REQUESTS = {
    "model-repository unload": ("POST", "/v2/repository/models/unet/unload", {}),
    "model-repository load": ("POST", "/v2/repository/models/unet/load", {}),
    "model-repository index": ("POST", "/v2/repository/index", {}),
    "shared-memory register": ("POST", "/v2/systemsharedmemory/region/stolen/register",
                               {"key": "/triton_python_backend_shm_region_1", "offset": 0, "byte_size": 64}),
    "trace settings": ("POST", "/v2/trace/setting", {"trace_file": "/tmp/openspeedy-trace.json"}),
    "logging settings": ("POST", "/v2/logging", {"log_file": "/tmp/openspeedy-log.txt"}),
}


@pytest.mark.parametrize("key", [None, "wrong-key-of-sufficient-length"], ids=["no-key", "wrong-key"])
@pytest.mark.parametrize("name", HTTP_ADMIN_REQUESTS)
def test_http_admin_requests_without_the_key_are_refused(triton, name, key):
    method, path, body = HTTP_ADMIN_REQUESTS[name]
    status, text = http(triton, method, path, body, {ADMIN_KEY_HEADER: key} if key else None)
    assert status == 403, f"{name}: {status} {text}"
    assert "restricted" in text.lower() or "unavailable" in text.lower(), text


def test_grpc_admin_calls_without_the_key_are_refused(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        calls = {
            "unload": lambda: client.unload_model("unet"),
            "load": lambda: client.load_model("unet"),
            "index": lambda: client.get_model_repository_index(),
            "shared-memory register": lambda: client.register_system_shared_memory(
                "stolen", "/triton_python_backend_shm_region_1", 64),
            "shared-memory status": lambda: client.get_system_shared_memory_status(),
            "trace settings": lambda: client.update_trace_settings(settings={"trace_file": "/tmp/x.json"}),
            "logging settings": lambda: client.update_log_settings({"log_file": "/tmp/x.txt"}),
        }
        for name, call in calls.items():
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert "restricted" in str(refused.value).lower() or "unavailable" in str(refused.value).lower(), (
                f"{name}: {refused.value}")
        for header in (ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER):
            with pytest.raises(InferenceServerException):
                client.unload_model("unet", headers={header: "wrong-key-of-sufficient-length"})
    finally:
        client.close()


def test_models_keep_serving_after_anonymous_unloads(triton):
    for model in ("unet", "i2vgen_xl"):
        assert http(triton, "POST", f"/v2/repository/models/{model}/unload")[0] == 403
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            with pytest.raises(InferenceServerException):
                client.unload_model(model)
        finally:
            client.close()
    assert http(triton, "GET", "/v2/health/ready")[0] == 200
    assert_serving(triton)


def test_inference_health_metadata_config_and_statistics_stay_open(triton):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/i2vgen_xl",
                 "/v2/models/i2vgen_xl/config", "/v2/models/i2vgen_xl/stats"):
        assert http(triton, "GET", path)[0] == 200, path
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        assert b"nv_inference_request_success" in response.read()
    with Client(triton.http_url, "http", timeout_s=120) as client:
        assert client.generate(IMAGE, "open", **QUICK).frames.shape == (2, 32, 32, 3)


def test_the_launchers_key_is_admitted(triton):
    """The key works (so the refusals above are the restriction, not a broken API), and only the launcher
    has it: it is in none of the models' processes."""
    status, text = http(triton, "POST", "/v2/repository/index", {}, triton.admin_headers)
    assert status == 200, text
    assert {entry["name"] for entry in json.loads(text)} == set(MODELS)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        index = client.get_model_repository_index(headers=triton.grpc_admin_headers, as_json=True)
        assert {entry["name"] for entry in index["models"]} == set(MODELS)
    finally:
        client.close()
    for model, stubs in stub_processes(triton.process.pid, triton.options.model_repository).items():
        for stub in stubs:
            assert triton.admin_key not in " ".join(stub.cmdline()), model
            assert triton.admin_key not in json.dumps(stub.environ()), model
