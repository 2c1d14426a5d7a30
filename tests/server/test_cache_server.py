"""The encoding caches in a real tritonserver: hits skip the encoder models (Triton's own statistics say
so), metrics are exported, and two servers share one Redis without ever serving another model's entry."""

import dataclasses
import re
import subprocess
import urllib.request

import numpy as np
import pytest

from openspeedy.cache import CacheSettings
from openspeedy.client import Client
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.server import ServerOptions, TritonServer
from tests.helpers import encode, free_port, random_image

pytestmark = pytest.mark.server
IMAGE = encode(random_image(100, 70, seed=21))
REQUEST = dict(num_frames=3, height=64, width=64, num_inference_steps=2, seed=8)


def executions(client: Client, model: str) -> int:
    stats = client._client.get_inference_statistics(model, as_json=True) if client.protocol == "grpc" else \
        client._client.get_inference_statistics(model)
    return int(stats["model_stats"][0].get("execution_count", 0))


def metric(server: TritonServer, name: str, cache: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    match = re.search(rf'^{name}{{[^}}]*cache="{cache}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_hit_skips_the_encoder_models_and_gives_the_same_video(triton):
    with Client(triton.grpc_url) as client:
        image = encode(random_image(90, 60, seed=22))  # an image no other test sends
        vae, clip = executions(client, "vae_encoder"), executions(client, "image_encoder")
        hits = metric(triton, "openspeedy_cache_hits_total", "image")
        miss = client.generate(image, "a cat", **REQUEST).frames
        assert (executions(client, "vae_encoder"), executions(client, "image_encoder")) == (vae + 1, clip + 1)
        hit = client.generate(image, "a cat", **REQUEST).frames
        assert (executions(client, "vae_encoder"), executions(client, "image_encoder")) == (vae + 1, clip + 1)
        assert hit.tobytes() == miss.tobytes()
        assert metric(triton, "openspeedy_cache_hits_total", "image") == hits + 1
        assert metric(triton, "openspeedy_cache_misses_total", "image") >= 1
        assert metric(triton, "openspeedy_cache_bytes", "image") > 0


def start(repository, log, environment=None):
    options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            environment=environment or {})
    return TritonServer(options, log_path=log).start()


def served_configs(server: TritonServer, repository) -> dict[str, str]:
    """Every model's config as a client reads it, and as the repository holds it."""
    configs = {}
    for folder in sorted(p.parent for p in repository.glob("*/config.pbtxt")):
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{folder.name}/config", timeout=10) as r:
            configs[f"GET {folder.name}/config"] = r.read().decode()
        configs[f"{folder.name}/config.pbtxt"] = (folder / "config.pbtxt").read_text()
    return configs


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("other") / "checkpoint", seed=1)


def test_servers_share_one_redis_and_never_serve_another_models_entry(
    redis_server, tiny_checkpoint, other_checkpoint, tmp_path
):
    cache = CacheSettings(redis_ttl_s=600)
    options = dataclasses.replace(ExportOptions(settings=TINY_SETTINGS), cache=cache)
    same = build_repository(tiny_checkpoint, tmp_path / "same", options)
    other = build_repository(other_checkpoint, tmp_path / "other", options)
    # The URL with a password, as a Secret would give it: the launcher's environment, never a model config.
    password = "s3cret-redis-password"
    subprocess.run(["redis-cli", "-p", str(redis_server.port), "CONFIG", "SET", "requirepass", password],
                   check=True, capture_output=True, timeout=10)
    url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
    env = {"OPENSPEEDY_REDIS_URL": url}
    servers = [start(same, tmp_path / "a.log", env), start(same, tmp_path / "b.log", env),
               start(other, tmp_path / "c.log", env)]
    try:
        for where, text in served_configs(servers[0], same).items():
            assert password not in text and "redis://" not in text, f"{where} holds the Redis URL"
        first, second, retrained = (Client(s.grpc_url) for s in servers)
        video = first.generate(IMAGE, "a boat", **REQUEST).frames
        # The second replica finds the image and both prompts in Redis: no encoder model runs.
        assert second.generate(IMAGE, "a boat", **REQUEST).frames.tobytes() == video.tobytes()
        assert executions(second, "vae_encoder") == executions(second, "image_encoder") == 0
        assert executions(second, "text_encoder") == 0
        assert metric(servers[1], "openspeedy_cache_hits_total", "image") == 1
        # Other weights: other fingerprints, so the same image and prompt miss and are computed afresh.
        other_video = retrained.generate(IMAGE, "a boat", **REQUEST).frames
        assert executions(retrained, "vae_encoder") == 1 and executions(retrained, "text_encoder") == 2
        assert not np.array_equal(other_video, video)

        # Redis gone: requests still succeed, computed locally, and the failure is counted.
        redis_server.stop()
        fresh = encode(random_image(80, 80, seed=23))
        assert first.generate(fresh, "a boat", **REQUEST).frames.shape == (3, 64, 64, 3)
        assert metric(servers[0], "openspeedy_cache_backend_errors_total", "image") >= 1
    finally:
        for server in servers:
            server.stop()
