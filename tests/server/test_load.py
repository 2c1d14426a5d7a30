"""Load: 8 concurrent clients x 5 requests each, mixed sizes, frame counts, images and protocols.

Every request must succeed with the right shape, and give the same bytes as the same request sent alone
(same seed and inputs -> same video, whatever else the server is doing at the time).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from openspeedy.client import Client
from tests.helpers import encode, random_image

pytestmark = pytest.mark.server

CLIENTS = 8
REQUESTS_PER_CLIENT = 5
REQUEST_TIMEOUT_S = 180.0
TOTAL_TIMEOUT_S = 900.0

IMAGES = [encode(random_image(120, 80, seed=21)), encode(random_image(64, 96, seed=22), "JPEG")]
# (image index, prompt, options): small, all different in size, frames, steps, guidance or chunking
CASES = [
    (0, "a boat on a lake", dict(num_frames=1, height=32, width=32, num_inference_steps=2, seed=101)),
    (1, "a boat on a lake", dict(num_frames=3, height=48, width=64, num_inference_steps=2, seed=102,
                                  guidance_scale=1.0)),
    (0, "fireworks", dict(num_frames=2, height=64, width=32, num_inference_steps=3, seed=103)),
    (1, "fireworks", dict(num_frames=4, height=32, width=48, num_inference_steps=2, seed=104, decode_chunk_size=1)),
    (0, "", dict(num_frames=2, height=40, width=40, num_inference_steps=2, seed=105, target_fps=4,
                 negative_prompt="blurry")),
]


def _url(triton, protocol):
    return triton.grpc_url if protocol == "grpc" else triton.http_url


def _generate(client, case):
    image, prompt, options = CASES[case]
    return client.generate(IMAGES[image], prompt, **options).frames


def _entry_stats(triton):
    import tritonclient.http as http

    client = http.InferenceServerClient(triton.http_url, connection_timeout=10, network_timeout=30)
    try:
        (stats,) = client.get_inference_statistics("i2vgen_xl", "1")["model_stats"]
    finally:
        client.close()
    inference = stats["inference_stats"]
    return inference["success"]["count"], inference["fail"]["count"]


def _settled_entry_stats(triton, quiet_s: float = 1.0, timeout_s: float = 30.0):
    """The entry model's counts once they stop moving.

    The Python backend reports a request's statistics after ``execute`` returns, and the response can
    reach the client before that, so a read straight after the last response can miss that request.
    """
    deadline = time.monotonic() + timeout_s
    counts, since = _entry_stats(triton), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        latest = _entry_stats(triton)
        if latest != counts:
            counts, since = latest, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return counts
    raise AssertionError(f"the entry model's statistics were still changing after {timeout_s:.0f} s")


def test_concurrent_clients_mixed_requests_all_succeed_deterministically(triton):
    # references, one request at a time
    with Client(triton.grpc_url, "grpc", timeout_s=REQUEST_TIMEOUT_S) as client:
        references = [_generate(client, case) for case in range(len(CASES))]
    for (_, _, options), frames in zip(CASES, references):
        assert frames.shape == (options["num_frames"], options["height"], options["width"], 3)

    successes_before, failures_before = _settled_entry_stats(triton)
    in_flight, most_in_flight, lock = 0, 0, threading.Lock()

    def one_client(index):
        nonlocal in_flight, most_in_flight
        protocol = "grpc" if index % 2 == 0 else "http"
        outcomes = []
        with Client(_url(triton, protocol), protocol, timeout_s=REQUEST_TIMEOUT_S) as client:
            for number in range(REQUESTS_PER_CLIENT):
                case = (index + number) % len(CASES)
                with lock:
                    in_flight += 1
                    most_in_flight = max(most_in_flight, in_flight)
                try:
                    outcomes.append((protocol, case, _generate(client, case)))
                finally:
                    with lock:
                        in_flight -= 1
        return outcomes

    started = time.monotonic()
    pool = ThreadPoolExecutor(CLIENTS, thread_name_prefix="load-client")
    try:
        futures = [pool.submit(one_client, index) for index in range(CLIENTS)]
        done, not_done = wait(futures, timeout=TOTAL_TIMEOUT_S)
        assert not not_done, f"{len(not_done)} clients still running after {TOTAL_TIMEOUT_S:.0f} s"
        results = [outcome for future in futures for outcome in future.result()]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.monotonic() - started

    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    assert most_in_flight > 1, "the clients never overlapped"
    assert {protocol for protocol, _, _ in results} == {"grpc", "http"}
    assert {case for _, case, _ in results} == set(range(len(CASES)))
    for protocol, case, frames in results:
        reference = references[case]
        assert frames.dtype == reference.dtype and frames.shape == reference.shape, (protocol, case)
        assert frames.tobytes() == reference.tobytes(), f"case {case} over {protocol} differs under load"

    successes_after, failures_after = _settled_entry_stats(triton)
    assert failures_after == failures_before
    assert successes_after - successes_before == CLIENTS * REQUESTS_PER_CLIENT
    print(f"{len(results)} requests from {CLIENTS} clients in {elapsed:.1f} s")
