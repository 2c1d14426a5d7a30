"""Streaming progress, cancellation, time limits, admission control and serving metrics, on a real
tritonserver (CPU, tiny model)."""

import concurrent.futures
import dataclasses
import io
import re
import threading
import time
import urllib.request
from pathlib import Path

import PIL.Image
import psutil
import pytest

from openspeedy.client import Client, GenerationError
from openspeedy.client.api import NO_RETRY, request_arrays
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.model_config import QueuePolicy
from openspeedy.server import ServerOptions, TritonServer
from tests.helpers import encode, free_port, random_image
from tests.server.serving_checks import pending, wait_until

pytestmark = pytest.mark.server
IMAGE = encode(random_image(100, 60, seed=31))


def test_stream_reports_every_step_then_the_same_video(triton):
    seen = []
    with Client(triton.grpc_url) as client:
        streamed = client.generate_stream(IMAGE, "a fox", on_progress=seen.append,
                                          num_frames=4, num_inference_steps=6, seed=3, mp4=True)
        plain = client.generate(IMAGE, "a fox", num_frames=4, num_inference_steps=6, seed=3)
    assert [(p.step, p.total) for p in seen] == [(i, 6) for i in range(1, 7)]
    assert all(p.preview is None for p in seen)  # PREVIEW_INTERVAL 0 (the default): none
    assert streamed.frames.tobytes() == plain.frames.tobytes()
    assert streamed.mp4 is not None


def test_stream_sends_a_preview_every_interval_and_the_same_video(triton):
    seen = []
    with Client(triton.grpc_url) as client:
        streamed = client.generate_stream(IMAGE, "a fox", on_progress=seen.append, preview_interval=2,
                                          num_frames=4, num_inference_steps=6, seed=3)
        plain = client.generate(IMAGE, "a fox", num_frames=4, num_inference_steps=6, seed=3)
    assert [p.step for p in seen if p.preview is not None] == [2, 4, 6]
    previews = [PIL.Image.open(io.BytesIO(p.preview)) for p in seen if p.preview is not None]
    # Four frames of the 64x64 video side by side, at latent resolution (8x8 each).
    assert all(image.format == "PNG" and image.size == (4 * 8, 8) for image in previews)
    assert len({image.tobytes() for image in previews}) == 3  # the prediction changes as the steps go
    assert streamed.frames.tobytes() == plain.frames.tobytes()  # previews do not change the video


def test_a_request_waiting_behind_others_is_told_its_place_and_when_it_starts(triton):
    """The stream model's own line: each waiting request hears how many are ahead (the running one
    included) as that changes, with an estimate once the running one has a pace; then it runs."""
    stop_first = threading.Event()
    updates: dict[str, list] = {"first": [], "second": [], "third": []}

    def run(name: str, **options) -> object:
        with Client(triton.grpc_url) as client:
            return client.generate_stream(IMAGE, name, on_progress=updates[name].append, **options)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(run, "first", cancel=stop_first, num_frames=32, height=256, width=256,
                            num_inference_steps=100)
        wait_until(lambda: updates["first"], 60, "the first request's first step")
        second = pool.submit(run, "second", num_frames=2, num_inference_steps=3, seed=1)
        wait_until(lambda: updates["second"], 30, "the second request's place")
        third = pool.submit(run, "third", num_frames=2, num_inference_steps=3, seed=2)
        wait_until(lambda: pending(triton) == 2, 30, "both waiting in the line")
        wait_until(lambda: updates["third"] and updates["third"][-1].starts_in_s is not None, 30,
                   "an estimate for the third (refreshed every few seconds)")
        stop_first.set()
        with pytest.raises(GenerationError):
            first.result(60)
        assert second.result(60).frames.shape[0] == 2 and third.result(60).frames.shape[0] == 2
    places = {name: [u.ahead for u in seen if u.waiting] for name, seen in updates.items()}
    assert places["first"] == []  # it started at once
    assert places["second"][0] == 1 and set(places["second"]) == {1}
    assert places["third"][0] == 2 and places["third"][-1] == 1, places  # it moved up, then ran
    estimates = [u.starts_in_s for u in updates["third"] if u.waiting]
    assert estimates[-1] is not None and estimates[-1] >= 0, estimates
    for name in ("second", "third"):  # the steps follow the waiting, never the other way round
        steps = [u.step for u in updates[name] if not u.waiting]
        assert steps == [1, 2, 3] and updates[name].index(next(u for u in updates[name] if not u.waiting)) == \
            len(places[name]), updates[name]
    assert pending(triton) == 0


def test_preview_interval_is_checked_and_the_plain_model_refuses_it(triton):
    with Client(triton.grpc_url, retry=NO_RETRY) as client:
        with pytest.raises(GenerationError, match=r"'PREVIEW_INTERVAL': must be 0 \(off\) up to "
                                                  r"NUM_INFERENCE_STEPS \(3\), got 4") as caught:
            client.generate_stream(IMAGE, "x", num_inference_steps=3, preview_interval=4)
        assert caught.value.input_name == "PREVIEW_INTERVAL"
        arrays = request_arrays(IMAGE, "x", stream=True, num_inference_steps=3, preview_interval=1)
        with pytest.raises(GenerationError, match="PREVIEW_INTERVAL"):
            client.infer_arrays(arrays, model="i2vgen_xl")


def test_stream_reports_bad_input_as_an_error(triton):
    with Client(triton.grpc_url) as client, pytest.raises(GenerationError, match="'HEIGHT'"):
        client.generate_stream(IMAGE, "x", height=30)


def test_streaming_needs_grpc(triton):
    with Client(triton.http_url, "http") as client, pytest.raises(ValueError, match="gRPC"):
        client.generate_stream(IMAGE, "x")


def _stub_processes(server):
    return {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}


def _shared_memory_segments(server):
    """The python backend's shared-memory regions mapped by this server's processes (other servers, of
    other tests, have their own)."""
    processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    return {m.path for p in processes for m in p.memory_maps(grouped=True) if "triton_python_backend" in m.path}


def test_cancelling_stops_the_generation_and_leaks_nothing(triton):
    stubs, segments = _stub_processes(triton), _shared_memory_segments(triton)
    with Client(triton.grpc_url) as client:
        started = time.monotonic()
        with pytest.raises(GenerationError, match="cancelled") as error:
            client.generate_stream(IMAGE, "x", num_frames=16, height=128, width=128, num_inference_steps=100,
                                   seed=1, cancel_after_step=2)
        assert error.value.cancelled
        # The next request is served at once: the cancelled one stopped instead of running 98 more steps.
        video = client.generate(IMAGE, "x", num_frames=2, num_inference_steps=2, seed=1)
        assert video.frames.shape[0] == 2
    log = Path("build/test-logs/triton.log")
    deadline = time.monotonic() + 30
    while "request cancelled after step" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "request cancelled after step" in log.read_text()
    assert _stub_processes(triton) == stubs
    assert _shared_memory_segments(triton) == segments
    assert time.monotonic() - started < 120


@pytest.fixture(scope="module")
def limited_server(tiny_checkpoint, tmp_path_factory):
    """A server whose entry models queue at most 2 requests and stop any generation after 4 s."""
    directory = tmp_path_factory.mktemp("limited")
    options = ExportOptions(settings=dataclasses.replace(TINY_SETTINGS, max_request_seconds=4.0),
                            queue=QueuePolicy(max_queue_size=2))
    repository = build_repository(tiny_checkpoint, directory / "models", options)
    server = TritonServer(ServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                        metrics_port=free_port()), log_path=directory / "triton.log").start()
    yield server
    server.stop()


def test_a_generation_past_its_time_limit_is_stopped(limited_server):
    with Client(limited_server.grpc_url, retry=NO_RETRY) as client:  # the stop is UNAVAILABLE: not sent again
        with pytest.raises(GenerationError, match="ran past its limit of 4 s"):
            client.generate(IMAGE, "x", num_frames=32, height=256, width=256, num_inference_steps=100, seed=1)
        assert client.generate(IMAGE, "x", num_frames=2, num_inference_steps=2, seed=1).frames.shape[0] == 2


def test_overload_is_refused_with_a_retry_error_and_nothing_hangs(limited_server):
    def one(i):
        with Client(limited_server.grpc_url if i % 2 else limited_server.http_url,
                    "grpc" if i % 2 else "http", timeout_s=60, retry=NO_RETRY) as client:
            try:
                client.generate(IMAGE, "x", num_frames=8, height=64, width=64, num_inference_steps=20, seed=i)
                return "ok"
            except GenerationError as error:
                return error

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10), timeout=120))
    refused = [r for r in results if r != "ok"]
    assert results.count("ok") >= 1 and refused, results
    for error in refused:
        assert error.retryable and "retry" in str(error), error
    with Client(limited_server.grpc_url) as client:  # and the server goes on serving
        assert client.generate(IMAGE, "x", num_frames=2, num_inference_steps=2, seed=1).frames.shape[0] == 2


def test_serving_metrics_are_exported(triton):
    with Client(triton.grpc_url) as client:
        client.generate(IMAGE, "x", num_frames=3, num_inference_steps=4, seed=2)
    text = urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()

    def value(pattern):
        match = re.search(pattern, text, re.MULTILINE)
        assert match, pattern
        return float(match.group(1))

    assert value(r'^openspeedy_denoising_step_seconds_count\{model="i2vgen_xl"\} (\S+)$') >= 4
    assert value(r'^openspeedy_frames_generated_total\{model="i2vgen_xl"\} (\S+)$') >= 3
    assert value(r'^openspeedy_requests_in_flight\{model="i2vgen_xl"\} (\S+)$') == 0
    assert value(r'^nv_inference_queue_duration_us\{model="i2vgen_xl",version="1"\} (\S+)$') >= 0
