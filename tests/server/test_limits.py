"""No single client may starve or exhaust the server: the component models answer only the orchestrator and
hold their own limits, an image's crop is bounded, and a priority flood does not jump the queue.
Every loop here is bounded in count and time; everything runs on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openspeedy.client import Client, GenerationCancelled, GenerationError
from openspeedy.serving import caller_key
from openspeedy.watchdog import stub_processes
from tests.helpers import encode, random_image
from tests.server.hostile_inputs import INVALID_UTF8, TALL_PNG, latents, prompts
from tests.server.serving_checks import in_flight, pending, wait_until

QUICK = dict(num_frames=2, height=64, width=64, num_inference_steps=2)


def direct(triton, model: str, arrays: dict[str, np.ndarray], key: str | None = None):
    """A client's own call of ``model``, with ``key`` as the caller-key parameter where given."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else
                                       {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64",
                                        np.uint8: "UINT8"}[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    parameters = {caller_key.PARAMETER: key} if key is not None else None
    try:
        return client.infer(model, inputs, parameters=parameters, client_timeout=60)
    finally:
        client.close()


@pytest.fixture(scope="module")
def server_key(triton) -> str:
    """The key the server's model processes share (the test runs as the server's user, so it may read it)."""
    return caller_key.key_path(triton.process.pid).read_text()


SMALL_CALLS = {
    "text_encoder": {"PROMPT": prompts(1, 5)},
    "image_encoder": {"IMAGE": np.zeros((1, 32, 32, 3), np.uint8)},
    "vae_encoder": {"IMAGE": np.zeros((1, 64, 64, 3), np.uint8)},
    "vae_decoder": {"LATENTS": latents(2, 8), "DECODE_CHUNK_SIZE": np.array([0], np.int32)},
}


@pytest.mark.parametrize("model", sorted(SMALL_CALLS))
def test_a_component_refuses_a_client_without_the_orchestrators_key(triton, model):
    with pytest.raises(InferenceServerException, match=f"model '{model}' is internal to this server"):
        direct(triton, model, SMALL_CALLS[model])
    with pytest.raises(InferenceServerException, match="is internal to this server"):
        direct(triton, model, SMALL_CALLS[model], key="0" * 64)


def test_the_unet_refuses_a_client_without_the_key(triton):
    arrays = {"SAMPLE": np.zeros((2, 4, 2, 8, 8), np.float32), "TIMESTEP": np.array([1], np.int64),
              "ENCODER_HIDDEN_STATES": np.zeros((2, 77, 16), np.float32), "FPS": np.array([8, 8], np.int64),
              "IMAGE_LATENTS": np.zeros((2, 4, 2, 8, 8), np.float32),
              "IMAGE_EMBEDDINGS": np.zeros((2, 1, 16), np.float32)}
    with pytest.raises(InferenceServerException, match="model 'unet' is internal to this server"):
        direct(triton, "unet", arrays)


@pytest.mark.parametrize("model", sorted(SMALL_CALLS))
def test_with_the_key_a_small_call_is_served(triton, server_key, model):
    assert direct(triton, model, SMALL_CALLS[model], key=server_key).get_response().outputs


@pytest.mark.parametrize(
    "model, arrays, message",
    [
        ("vae_decoder", {"LATENTS": latents(40, 8), "DECODE_CHUNK_SIZE": np.array([0], np.int32)},
         "invalid input 'LATENTS': has 40 on axis 'frames'; the limit is 32"),
        ("vae_decoder", {"LATENTS": latents(1, 128), "DECODE_CHUNK_SIZE": np.array([0], np.int32)},
         "invalid input 'LATENTS': has 128 on axis 'latent_height'; the limit is 64"),
        ("vae_decoder", {"LATENTS": latents(2, 8), "DECODE_CHUNK_SIZE": np.array([-1], np.int32)},
         "invalid input 'DECODE_CHUNK_SIZE': must be between 0 and 1024, got -1"),
        ("vae_decoder", {"LATENTS": latents(0, 8), "DECODE_CHUNK_SIZE": np.array([0], np.int32)},
         "invalid input 'LATENTS': has no elements on axis 'frames'"),
        ("text_encoder", {"PROMPT": prompts(2000, 4)},
         "invalid input 'PROMPT': has 2000 on axis 'batch'; the limit is 2"),
        ("text_encoder", {"PROMPT": prompts(1, 16 * 1024 + 1)},
         "invalid input 'PROMPT': has an element of 16385 bytes; the limit is 16384 bytes"),
        ("text_encoder", {"PROMPT": INVALID_UTF8}, "invalid input 'PROMPT': must be valid UTF-8"),
        ("image_encoder", {"IMAGE": np.zeros((1, 1024, 1024, 3), np.uint8)},
         "invalid input 'IMAGE': has 1024 on axis 'height'; the limit is 512"),
        ("vae_encoder", {"IMAGE": np.zeros((3, 64, 64, 3), np.uint8)},
         "invalid input 'IMAGE': has 3 on axis 'batch'; the limit is 2"),
    ],
    ids=["frames", "size", "chunk", "no-frames", "prompts", "prompt-bytes", "utf8", "image-size", "batch"],
)
def test_with_the_key_a_component_holds_its_limits_with_a_named_error(triton, server_key, model, arrays, message):
    with pytest.raises(InferenceServerException) as caught:
        direct(triton, model, arrays, key=server_key)
    assert message in caught.value.message()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Traceback" not in caught.value.message() and "Error:" not in caught.value.message()


@pytest.mark.parametrize("model", sorted(SMALL_CALLS) + ["unet"])
def test_every_component_has_a_bounded_queue(triton, model):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    config = client.get_model_config(model, as_json=True)["config"]
    client.close()
    assert int(config["dynamic_batching"]["default_queue_policy"]["max_queue_size"]) >= 1
    assert caller_key.PARAMETER not in str(config)  # the key is in no config a client can read


def entry_stub(triton, model: str = "i2vgen_xl") -> psutil.Process:
    (stub,) = stub_processes(triton.process.pid, triton.options.model_repository)[model]
    return stub


def peak_rss_bytes(process: psutil.Process) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


# The entry stub's peak memory may grow this much while it refuses the image (its Python objects and the
# decoded 1x2000 pixels); without the check, the crop's resize alone took 1.5 GB.
PEAK_GROWTH_BOUND = 100 * 2**20


def test_an_extreme_aspect_ratio_is_refused_without_the_crops_memory(triton):
    stub = entry_stub(triton)
    with Client(triton.grpc_url) as client:
        client.generate(encode(random_image()), "warm", seed=1, **QUICK)  # the stub's usual peak first
        Path(f"/proc/{stub.pid}/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = peak_rss_bytes(stub)
        with pytest.raises(GenerationError) as caught:
            client.generate(TALL_PNG, "tall", seed=1, **{**QUICK, "height": 512, "width": 512})
    assert caught.value.input_name == "IMAGE"
    assert "aspect ratio 1:2000 (width:height) is beyond the limit for a 512x512 video" in str(caught.value)
    assert peak_rss_bytes(stub) - before < PEAK_GROWTH_BOUND


def test_a_priority_flood_does_not_jump_a_default_request(triton):
    """Priority is the operator's: the exported config has none, so a client's priority 1 queues behind
    the default request that came first (with priority on, the flood went first)."""
    finished: list[str] = []
    hold = threading.Event()
    errors: list[Exception] = []

    def send(name: str, priority: int, cancel=None, steps: int = 1) -> None:
        try:
            with Client(triton.grpc_url) as client:
                client.generate_stream(encode(random_image()), name, cancel=cancel, priority=priority, seed=1,
                                       **{**QUICK, "num_inference_steps": steps})
            finished.append(name)
        except GenerationCancelled:
            pass
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    # At work until the flood has queued behind it; then cancelled.
    threads = [threading.Thread(target=send, args=("busy", 0, hold, 100), daemon=True)]
    threads[0].start()
    try:
        wait_until(lambda: in_flight(triton) == 1, 60, "the first request to start")
        threads.append(threading.Thread(target=send, args=("default", 0), daemon=True))
        threads[-1].start()
        wait_until(lambda: pending(triton) == 1, 60, "the default request to queue")
        for i in range(FLOOD):
            threads.append(threading.Thread(target=send, args=(f"flood-{i}", 1), daemon=True))
            threads[-1].start()
        wait_until(lambda: pending(triton) == 1 + FLOOD, 60, "the flood to queue")
    finally:
        hold.set()
    deadline = time.monotonic() + 300
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "the requests did not finish within 300 s"
    assert not errors, errors
    assert finished[0] == "default" and len(finished) == 1 + FLOOD, finished


FLOOD = 4  # priority-1 requests sent after the default one; the queue holds 8
