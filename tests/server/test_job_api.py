"""`openspeedy api`, the OpenAI-compatible video job API, driven by the official `openai` client: against a
real tritonserver (tiny model) and, for jobs shared by processes and kept across restarts, a real
redis-server. Every API runs as its own `openspeedy api` process on a loopback port."""

import dataclasses
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import PIL.Image
import pytest

from openspeedy.api.eta import poll_after_ms
from openspeedy.api.jobs import MAX_ATTEMPTS, Job, RedisJobs, new_job_id
from openspeedy.cache import REDIS_URL_ENV, REDIS_URL_FILE_ENV
from openspeedy.client import Client
from openspeedy.video import decode_video
from tests.helpers import encode, free_port, random_image

pytestmark = pytest.mark.server
IMAGE = encode(random_image(100, 60, seed=41))
KEY, OTHER_KEY = "sk-test-one", "sk-test-two"
TRITON_LOG = Path("build/test-logs/triton.log")
# A job long enough on the tiny model to be caught running.
LONG = {"num_frames": 16, "num_inference_steps": 100, "seed": 1}


class Api:
    """An `openspeedy api` process on a free loopback port, stopped as a container is (SIGTERM)."""

    def __init__(self, directory: Path, triton, *flags: str, redis_url: str | None = None, name: str = "api"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in (REDIS_URL_ENV, REDIS_URL_FILE_ENV)}
        if redis_url:
            env[REDIS_URL_ENV] = redis_url
        self.log = directory / f"{name}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "openspeedy.cli", "api", "--port", str(self.port), "--server", triton.grpc_url,
                 *flags], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180  # importing torch and diffusers is slow on a busy machine
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"openspeedy api exited: {self.log.read_text()}"
            try:
                with urllib.request.urlopen(f"{self.url}/openapi.json", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"openspeedy api did not answer within 180 s: {self.log.read_text()}")

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or "unused", base_url=f"{self.url}/v1", max_retries=0, timeout=60,
                             default_headers={} if key else {"Authorization": ""})

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def create(client: openai.OpenAI, *, image: bytes = IMAGE, size: str = "64x64", seconds: str | None = None,
           **extra):
    arguments = {"seconds": seconds} if seconds else {}
    return client.videos.create(prompt="a fox in the snow", input_reference=("in.png", image, "image/png"),
                                size=size, extra_body=extra, **arguments)


def wait_for(client: openai.OpenAI, video_id: str, until, timeout_s: float = 120):
    """Retrieves the job until ``until(video)`` holds; at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        video = client.videos.retrieve(video_id)
        if until(video):
            return video
        assert time.monotonic() < deadline, f"gave up waiting: {video}"
        time.sleep(0.1)


def finished(video) -> bool:
    return video.status in ("completed", "failed")


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(f"# API keys\n{KEY}\n\n{OTHER_KEY}\n")
    return path


@pytest.fixture(scope="module")
def api(triton, keys_file, tmp_path_factory):
    """One API without Redis: keys required, at most 2 videos in flight per key, bodies up to 200 kB."""
    server = Api(tmp_path_factory.mktemp("api"), triton, "--keys-file", str(keys_file), "--max-jobs-per-key", "2",
                 "--max-upload-bytes", "200000", "--keep-s", "600")
    yield server
    assert server.stop() == 0, server.log.read_text()


def test_create_poll_download_list_delete_with_the_openai_client(api, triton):
    client = api.client()
    created = create(client, seconds="0.5", target_fps=8, num_inference_steps=4, seed=5)
    assert created.object == "video" and created.status in ("queued", "in_progress") and created.id.startswith("video_")
    assert (created.size, created.seconds, created.model) == ("64x64", "0.5", "i2vgen_xl_stream")
    done = wait_for(client, created.id, finished)
    assert done.status == "completed" and done.progress == 100 and done.error is None, done
    assert done.expires_at - done.completed_at == 600

    mp4 = client.videos.download_content(created.id).read()
    with Client(triton.grpc_url) as direct:  # the same request, straight to the plain entry model
        expected = direct.generate(IMAGE, "a fox in the snow", num_frames=4, height=64, width=64,
                                   num_inference_steps=4, seed=5, target_fps=8, mp4=True)
    frames = decode_video(mp4)
    assert frames.shape == (4, 64, 64, 3)
    assert frames.tobytes() == decode_video(expected.mp4).tobytes()
    # Its last live preview (4 steps: at the last one): 4 frames side by side at latent resolution.
    thumbnail = PIL.Image.open(io.BytesIO(client.videos.download_content(created.id, variant="thumbnail").read()))
    assert thumbnail.format == "PNG" and thumbnail.size == (4 * 8, 8)

    # The official client's own poll helper, which waits what the server's openai-poll-after-ms says.
    second = client.videos.create_and_poll(prompt="a fox in the snow", input_reference=("in.png", IMAGE, "image/png"),
                                           size="64x64", extra_body=dict(num_frames=2, num_inference_steps=2, seed=6))
    assert second.status == "completed", second
    first_page = client.videos.list(limit=1)
    assert [v.id for v in first_page.data] == [second.id] and first_page.has_more  # newest first
    assert [v.id for v in client.videos.list(limit=1, order="asc").data] == [created.id]
    # Iterating, the client follows `after` (the page's last_id) through the pages.
    assert [v.id for v in client.videos.list(limit=1)] == [second.id, created.id]
    assert [v.id for v in api.client(OTHER_KEY).videos.list()] == []  # another key sees none of them
    with pytest.raises(openai.NotFoundError):
        api.client(OTHER_KEY).videos.retrieve(created.id)

    deleted = client.videos.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError) as missing:
        client.videos.retrieve(created.id)
    assert missing.value.body["param"] == "video_id"
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(created.id)
    client.videos.delete(second.id)


def _cancelled_steps(log_text: str) -> list[tuple[int, int]]:
    return [(int(d), int(t)) for d, t in
            re.findall(r"i2vgen_xl_stream: request cancelled after step (\d+)/(\d+)", log_text)]


def test_delete_while_running_stops_the_server_within_a_step(api):
    client = api.client()
    seen_before = len(_cancelled_steps(TRITON_LOG.read_text()))
    job = create(client, size="128x128", **LONG)
    running = wait_for(client, job.id, lambda v: v.progress >= 6 or finished(v))  # past the first preview
    assert running.status == "in_progress", running
    thumbnail = client.videos.download_content(job.id, variant="thumbnail").read()
    assert PIL.Image.open(io.BytesIO(thumbnail)).size == (4 * 16, 16)  # while it runs: the video so far
    client.videos.delete(job.id)
    deadline = time.monotonic() + 60
    while len(_cancelled_steps(TRITON_LOG.read_text())) == seen_before and time.monotonic() < deadline:
        time.sleep(0.2)
    (step, total), = _cancelled_steps(TRITON_LOG.read_text())[seen_before:]
    assert total == 100 and running.progress <= step < total  # stopped where the cancel arrived, not at the end
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(job.id)
    # The server is free again: the next video completes.
    after = create(client, num_frames=2, num_inference_steps=2, seed=1)
    assert wait_for(client, after.id, finished).status == "completed"
    client.videos.delete(after.id)


def _error(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as raised:
        call()
    return raised.value


def test_bad_requests_get_the_official_error_naming_the_field(api):
    no_key = _error(lambda: api.client(None).videos.list())
    assert no_key.status_code == 401 and no_key.body["type"] == "invalid_request_error"
    wrong_key = _error(lambda: api.client("sk-wrong").videos.list())
    assert wrong_key.status_code == 401 and wrong_key.code == "invalid_api_key"

    client = api.client()
    cases = [
        (dict(size="64by64"), "size", "WIDTHxHEIGHT"),
        (dict(size="63x64"), "size", "multiple of 8"),  # the contract's rule on WIDTH
        (dict(seconds="soon"), "seconds", "positive number"),
        (dict(num_frames=1000), "num_frames", "between 1 and"),
        (dict(guidance_interval_start=0.9, guidance_interval_end=0.2), "guidance_interval_start", "start < end"),
        (dict(image=b"not an image"), "input_reference", "could not be decoded"),
        (dict(unknown_field=1), "unknown_field", "not permitted"),
    ]
    for arguments, param, rule in cases:
        error = _error(lambda a=arguments: create(client, **a))
        assert (error.status_code, error.param, error.type) == (400, param, "invalid_request_error"), arguments
        assert rule in error.message, (arguments, error.message)

    oversized = _error(lambda: create(client, image=encode(random_image(400, 400, seed=2))))  # ~480 kB of PNG
    assert oversized.status_code == 413 and oversized.param == "input_reference" and "200000" in oversized.message
    assert client.videos.list().data == []  # none of them made a job


def test_an_oversized_upload_without_a_length_is_cut_off(api):
    """A chunked body announces no length: the limit holds while it is read."""
    boundary = "openspeedy-test"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--{boundary}\r\n'
            'Content-Disposition: form-data; name="input_reference"; filename="in.png"\r\n\r\n').encode()
    chunks = [head, *([b"\0" * 50_000] * 6), f"\r\n--{boundary}--\r\n".encode()]  # 300 kB > 200 kB
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    try:
        connection.request("POST", "/v1/videos", body=iter(chunks), encode_chunked=True, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        error = json.loads(response.read())["error"]
    finally:
        connection.close()
    assert response.status == 413 and error["param"] == "input_reference" and error["code"] == "request_too_large"


def test_a_key_over_its_limit_of_videos_in_flight_gets_429(api):
    client = api.client(OTHER_KEY)
    running = [create(client, **LONG) for _ in range(2)]
    refused = _error(lambda: create(client, **LONG))
    assert isinstance(refused, openai.RateLimitError) and refused.code == "rate_limit_exceeded"
    assert create(api.client(), num_frames=2, num_inference_steps=2).status == "queued"  # other keys are not held
    client.videos.delete(running[0].id)  # a deleted video frees its place
    third = create(client, num_frames=2, num_inference_steps=2)
    for video in [running[1], third]:
        client.videos.delete(video.id)
    for video in api.client().videos.list():
        api.client().videos.delete(video.id)


def test_no_keys_means_loopback_only(triton, tmp_path):
    result = subprocess.run([sys.executable, "-m", "openspeedy.cli", "api", "--host", "0.0.0.0", "--server",
                             triton.grpc_url], capture_output=True, text=True, timeout=180)
    assert result.returncode == 2 and "without API keys" in result.stderr


def test_the_openapi_schema_is_served(api):
    with urllib.request.urlopen(f"{api.url}/openapi.json", timeout=10) as response:
        schema = json.load(response)
    assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content"} <= set(schema["paths"])
    form = schema["components"]["schemas"]["CreateVideoForm"]["properties"]
    assert {"prompt", "input_reference", "size", "seconds", "num_frames", "seed"} <= set(form)


def test_jobs_outlive_an_api_process_and_every_process_sees_them(triton, redis_server, tmp_path):
    first = Api(tmp_path, triton, redis_url=redis_server.url, name="first")
    try:
        job = create(first.client(), size="128x128", num_frames=8, num_inference_steps=40, seed=3)
        wait_for(first.client(), job.id, lambda v: v.progress >= 2 or finished(v))
        assert first.stop() == 0  # mid-generation: its job goes back to the queue
    finally:
        first.stop()
    assert "queued again" in first.log.read_text()

    restarted = Api(tmp_path, triton, redis_url=redis_server.url, name="restarted")
    other = Api(tmp_path, triton, redis_url=redis_server.url, name="other")
    try:
        done = wait_for(restarted.client(), job.id, finished, timeout_s=180)
        assert done.status == "completed", done
        seen = other.client().videos.retrieve(job.id)
        assert (seen.status, seen.completed_at) == ("completed", done.completed_at)
        mp4 = other.client().videos.download_content(job.id).read()
        assert mp4 == restarted.client().videos.download_content(job.id).read()
        assert decode_video(mp4).shape == (8, 128, 128, 3)
        made_by_other = create(other.client(), num_frames=2, num_inference_steps=2, seed=4)
        assert {v.id for v in restarted.client().videos.list()} == {job.id, made_by_other.id}
        assert wait_for(restarted.client(), made_by_other.id, finished).status == "completed"
        restarted.client().videos.delete(made_by_other.id)
        with pytest.raises(openai.NotFoundError):
            other.client().videos.retrieve(made_by_other.id)
    finally:
        assert restarted.stop() == 0 and other.stop() == 0


def test_a_job_whose_process_died_is_queued_again_then_failed(redis_server):
    """A worker that stops renewing its lease (its process was killed) loses the job to the queue; after
    MAX_ATTEMPTS such losses the job fails instead of looping for ever."""
    store = RedisJobs(redis_server.url, lease_s=1)
    job = Job(id=new_job_id(), owner="o", created_at=int(time.time()), model="m", size="64x64", seconds="1",
              prompt="p", options={})
    assert store.create(job, b"image", max_in_flight=1)
    assert not store.create(dataclasses.replace(job, id=new_job_id()), b"image", max_in_flight=1)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert store.take() == job.id and store.take() is None
        assert store.requeue_abandoned(keep_s=60) == []  # its lease still holds
        deadline = time.monotonic() + 10
        while not store.requeue_abandoned(keep_s=60):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        if attempt < MAX_ATTEMPTS:
            assert (store.get(job.id).status, store.get(job.id).attempts) == ("queued", attempt)
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost" and store.take() is None
    assert store.image(job.id) is None and 0 < store.client.ttl(f"{store.prefix}job:{job.id}") <= 60
    assert store.create(dataclasses.replace(job, id=new_job_id()), b"image", max_in_flight=1)  # its place is free
    store.client.delete(f"{store.prefix}job:{job.id}")  # as when it expires
    store.create(dataclasses.replace(job, id=new_job_id()), b"image", max_in_flight=5)
    assert job.id.encode() not in store.client.zrange(f"{store.prefix}jobs:o", 0, -1)  # the index forgets it


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_jobs_ahead_are_those_workers_take_first(kind, request):
    """Workers take the oldest queued job first; a job queued again (its worker stopped) is taken next."""
    from openspeedy.api.jobs import MemoryJobs

    store = MemoryJobs() if kind == "memory" else RedisJobs(request.getfixturevalue("redis_server").url,
                                                            prefix=f"openspeedy:test:{new_job_id()}:")
    made = [Job(id=new_job_id(), owner="o", created_at=int(time.time()), model="m", size="64x64", seconds="1",
                prompt="p", options={}) for _ in range(3)]
    for job in made:
        assert store.create(job, b"image", max_in_flight=5)

    def ahead() -> list[list[str] | None]:
        found = [store.ahead(job.id) for job in made]
        return [None if jobs is None else [job.id for job in jobs] for jobs in found]

    ids = [job.id for job in made]
    assert ahead() == [[], ids[:1], ids[:2]] and store.running() == []
    assert store.take() == made[0].id
    assert ahead() == [None, [], ids[1:2]]
    started = store.get(made[0].id)
    started.start()
    store.save(started)
    assert [job.id for job in store.running()] == ids[:1]
    store.requeue(dataclasses.replace(started, status="queued"))
    assert ahead() == [[], ids[:1], ids[:2]] and store.running() == []
    store.delete(made[1].id)
    assert ahead() == [[], None, ids[:1]]
    assert store.ahead("video_unknown") is None


def test_a_queued_job_shows_its_queue_position_and_when_it_should_be_done(api):
    """Two long videos keep the API's two workers busy (the second one's stream waits in the stream model's
    line: the tiny server runs one video at a time, and the job shows its place there); once the first has
    a pace, it has an estimate of when it is done, and a third waits first in line, done no earlier than the
    first ends, then runs."""
    running = [create(api.client(), **LONG), create(api.client(OTHER_KEY), **LONG)]
    try:
        first = wait_for(api.client(), running[0].id,
                         lambda v: "estimated_completed_at" in (v.model_extra or {}) or finished(v))
        assert first.status == "in_progress", first
        estimates = [first.model_extra["estimated_completed_at"]]
        taken = wait_for(api.client(OTHER_KEY), running[1].id,
                         lambda v: "queue_position" in (v.model_extra or {}) or finished(v))
        assert (taken.status, taken.model_extra["queue_position"]) == ("in_progress", 1), taken  # on the server
        waiting = create(api.client(OTHER_KEY), num_frames=2, num_inference_steps=2, seed=5)
        answer = api.client(OTHER_KEY).videos.with_raw_response.retrieve(waiting.id)
        seen = answer.parse()
        assert (seen.status, seen.model_extra.get("queue_position")) == ("queued", 0), seen
        assert seen.model_extra["estimated_completed_at"] >= min(estimates) - 5, (seen, estimates)
        # When to ask again: a tenth of the time it is still expected to take, within the hint's bounds.
        expected = poll_after_ms(seen.model_extra["estimated_completed_at"])
        assert abs(int(answer.headers["openai-poll-after-ms"]) - expected) <= 200, (answer.headers, expected)
    finally:
        api.client().videos.delete(running[0].id)
        api.client(OTHER_KEY).videos.delete(running[1].id)
    done = wait_for(api.client(OTHER_KEY), waiting.id, finished)
    assert done.status == "completed" and not {"queue_position", "estimated_completed_at"} & set(
        done.model_extra or {}), done
    finished_answer = api.client(OTHER_KEY).videos.with_raw_response.retrieve(waiting.id)
    assert "openai-poll-after-ms" not in finished_answer.headers  # nothing left to wait for
