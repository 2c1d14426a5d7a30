"""The command line and Python client against a real tritonserver: Ctrl-C and --timeout cancel on the
server, --model and --priority reach it on every path, a busy server is retried, CACHE_HIT is answered."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openspeedy.client import Client, GenerationCancelled, example_image
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.model_config import QueuePolicy
from openspeedy.server import ServerOptions, TritonServer
from openspeedy.video import decode_video
from tests.helpers import encode, free_port, random_image
from tests.server.serving_checks import LogTail, default_sigint, in_flight, pending, wait_until

pytestmark = pytest.mark.server
OPENSPEEDY = [sys.executable, "-m", "openspeedy.cli"]
TRITON_LOG = Path("build/test-logs/triton.log")  # the session server's (tests/conftest.py)
# Long enough to be stopped halfway on any machine: the tiny model's most steps at a larger size.
LONG = ["--num-frames", "16", "--height", "128", "--width", "128", "--steps", "100"]
QUICK = ["--num-frames", "3", "--height", "64", "--width", "64", "--steps", "2"]


class Generate:
    """`openspeedy generate` as a child process, its stderr read as it comes (tqdm writes steps with \\r)."""

    def __init__(self, url: str, out: Path, *options: str):
        self.process = subprocess.Popen(
            OPENSPEEDY + ["generate", "--image", str(example_image()), "--prompt", "a lighthouse", "--out", str(out),
                          "--url", url, *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
        )
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read(1), ""):
            self.stderr += chunk

    def step(self) -> int:
        steps = re.findall(r"(\d+)/100 \[", self.stderr)
        return int(steps[-1]) if steps else 0

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def messages(self) -> list[str]:
        """stderr without the progress bar's redraws."""
        lines = re.split(r"[\r\n]+", self.stderr)
        return [line for line in lines if line.strip() and not line.startswith("denoising")]


def test_ctrl_c_cancels_on_the_server_and_exits_130(triton, tmp_path):
    log = LogTail(TRITON_LOG)
    run = Generate(triton.grpc_url, tmp_path / "v.mp4", *LONG)
    wait_until(lambda: run.step() >= 2, 120, "the first denoising steps")
    run.process.send_signal(signal.SIGINT)
    seen = run.step()
    assert run.wait(timeout=20) == 130, run.stderr
    assert "Traceback" not in run.stderr
    assert run.messages() == ["interrupted: request cancelled (the server stops it within one step)"], run.stderr
    stopped = wait_until(log.cancelled_after_step, 30, "the server to log the cancel")
    # Stopped at the step after the last one the client saw (or the one after that, which may have been
    # under way when the signal came), not after all 100.
    assert stopped <= seen + 2, (stopped, seen)
    wait_until(lambda: in_flight(triton) == 0, 15, "the in-flight gauge to drop to 0")
    assert not (tmp_path / "v.mp4").exists()


def test_timeout_cancels_on_the_server_with_a_message(triton, tmp_path):
    log = LogTail(TRITON_LOG)
    run = Generate(triton.grpc_url, tmp_path / "v.mp4", *LONG, "--timeout", "2")
    assert run.wait(timeout=60) == 1, run.stderr
    assert "Traceback" not in run.stderr
    (message,) = run.messages()
    assert message.startswith("timed out: no video within the time limit of 2 s"), message
    assert message.endswith("the request was cancelled"), message
    assert wait_until(log.cancelled_after_step, 30, "the server to log the cancel") < 100
    wait_until(lambda: in_flight(triton) == 0, 15, "the in-flight gauge to drop to 0")


def test_a_request_waiting_on_the_server_prints_its_place_then_runs(triton, tmp_path):
    first = Generate(triton.grpc_url, tmp_path / "first.mp4", *LONG)
    try:
        wait_until(lambda: first.step() >= 1, 120, "the first request's first step")
        second = Generate(triton.grpc_url, tmp_path / "second.mp4", *QUICK)
        wait_until(lambda: "queued on the server" in second.stderr, 60, "the second request's place")
        first.process.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 130, first.stderr
        assert second.wait(timeout=120) == 0, second.stderr
    finally:
        first.process.kill()
    place, *_ = second.messages()
    assert re.fullmatch(r"queued on the server: 1 request ahead, (starting in about \d+ s|no estimate yet)",
                        place), second.stderr
    assert "Traceback" not in second.stderr
    assert decode_video((tmp_path / "second.mp4").read_bytes()).shape == (3, 64, 64, 3)


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_model_is_honoured_on_every_path(triton, tmp_path, stream):
    run = Generate(triton.grpc_url, tmp_path / "v.mp4", *QUICK, stream, "--model", "no_such_model")
    assert run.wait(timeout=60) == 1
    assert run.messages() == ["error: Request for unknown model: 'no_such_model' is not found"], run.stderr


def test_a_plain_model_can_be_streamed(triton, tmp_path):
    """Over a stream, the plain model answers the video in one response, without progress."""
    run = Generate(triton.grpc_url, tmp_path / "v.mp4", *QUICK, "--stream", "--model", "i2vgen_xl")
    assert run.wait(timeout=120) == 0, run.stderr
    assert decode_video((tmp_path / "v.mp4").read_bytes()).shape == (3, 64, 64, 3)


def test_priority_is_honoured_when_streaming(one_slot_server, tmp_path):
    """Where the operator turned priority on: one request at work, then a default-priority one queued, then
    `--priority 1`: the last one is served first."""
    triton = one_slot_server
    image = encode(random_image(seed=41))
    hold, finished = threading.Event(), {}

    def stream(name: str, cancel=None, **options) -> None:
        with Client(triton.grpc_url) as client:
            try:
                client.generate_stream(image, "x", cancel=cancel, frames=False, mp4=True, **options)
            except GenerationCancelled:
                pass
        finished[name] = time.time()

    # The most frames and steps the tiny server takes: this request must not end before the urgent client,
    # whose start can take tens of seconds on a loaded 2-core machine, has queued (it is cancelled then).
    busy = threading.Thread(target=stream, args=("busy", hold), kwargs=dict(num_frames=32, height=128, width=128,
                                                                             num_inference_steps=100))
    busy.start()
    try:
        wait_until(lambda: in_flight(triton) == 1, 60, "the long request to start")
        # Many steps, so that it is still at work when the urgent client, served before it, writes its video.
        default = threading.Thread(target=stream, args=("default",), kwargs=dict(num_frames=3, height=64, width=64,
                                                                                  num_inference_steps=30))
        default.start()
        wait_until(lambda: pending(triton) == 1, 60, "the default-priority request to queue")
        video = tmp_path / "v.mp4"
        urgent = Generate(triton.grpc_url, video, *QUICK, "--priority", "1")
        try:
            wait_until(lambda: pending(triton) == 2, 60, "the urgent request to queue")
        except AssertionError as error:
            raise AssertionError(f"{error}; {in_flight(triton)} at work, {pending(triton)} queued; the command "
                                 f"wrote: {urgent.stderr[-2000:]!r}") from None
    finally:
        hold.set()
    assert urgent.wait(timeout=120) == 0, urgent.stderr
    default.join(120)
    busy.join(60)
    # When its video was written, not when the process ended: a child's exit can lag under a loaded CPU.
    assert video.stat().st_mtime < finished["default"]


@pytest.fixture(scope="module")
def one_slot_server(tiny_checkpoint, tmp_path_factory):
    """A server whose streaming model takes one request at work and one in its queue: a third is refused.
    Priority is on: one priority-1 request may queue besides, and is served first."""
    directory = tmp_path_factory.mktemp("one_slot")
    queue = QueuePolicy(max_queue_size=1, priority_levels=2, high_priority_queue_size=1)
    repository = build_repository(tiny_checkpoint, directory / "models", ExportOptions(settings=TINY_SETTINGS,
                                                                                       queue=queue))
    server = TritonServer(ServerOptions(repository, http_port=free_port(), grpc_port=free_port(),
                                        metrics_port=free_port()), log_path=directory / "triton.log").start()
    yield server
    server.stop()


def test_a_busy_server_is_retried_until_it_serves(one_slot_server, tmp_path):
    image = encode(random_image(seed=43))
    hold = threading.Event()

    def occupy() -> None:
        with Client(one_slot_server.grpc_url) as client:
            with pytest.raises(GenerationCancelled):
                client.generate_stream(image, "x", cancel=hold, num_frames=16, height=128, width=128,
                                       num_inference_steps=100)

    occupying = [threading.Thread(target=occupy) for _ in range(2)]
    occupying[0].start()
    try:
        wait_until(lambda: in_flight(one_slot_server) == 1, 60, "the first request to start")
        occupying[1].start()
        wait_until(lambda: pending(one_slot_server) == 1, 60, "the second request to queue")
        run = Generate(one_slot_server.grpc_url, tmp_path / "v.mp4", *QUICK, "--retries", "10")
        wait_until(lambda: "attempt 1 refused" in run.stderr, 60, "the first refusal")
    finally:
        hold.set()
    for thread in occupying:
        thread.join(60)
    assert run.wait(timeout=120) == 0, run.stderr
    refusals = [line for line in run.messages() if " refused, retrying in " in line]
    assert refusals and all("Exceeds maximum queue size" in line for line in refusals), run.stderr
    assert decode_video((tmp_path / "v.mp4").read_bytes()).shape == (3, 64, 64, 3)


def test_cache_hit_is_answered_on_every_path(triton):
    """Each entry model is its own process with its own cache (no Redis here): a hit needs the same model."""
    image = encode(random_image(seed=47))
    request = dict(num_frames=2, height=64, width=64, num_inference_steps=2, seed=1)
    with Client(triton.grpc_url) as client:
        plain = [client.generate(image, "a", **request).cache_hit,
                 client.generate(image, "another prompt", **request).cache_hit]
        streamed = [client.generate_stream(image, "a", **request).cache_hit,
                    client.generate_stream(image, "a", **request | dict(seed=2)).cache_hit,
                    client.generate_stream(image, "a", **request | dict(width=72)).cache_hit]
    assert plain == [False, True]
    assert streamed == [False, True, False]  # another size is another encoding
    with Client(triton.http_url, "http") as client:
        assert client.generate(image, "b", **request).cache_hit is True
