"""The encoding caches: correct keys, LRU under a byte budget, and no effect on the video (sharing through
Redis: tests/server/test_cache_redis.py)."""

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch

from openspeedy.cache import CacheSettings, CountingMetrics, EncodingCaches, LruCache
from openspeedy.pipeline import I2VGenXL
from openspeedy.request import RequestSettings, parse_request
from tests.helpers import encode, random_image


def entry(n_floats: int, value: float = 0.0):
    return {"x": torch.full((n_floats,), float(value))}


def test_lru_holds_its_byte_budget_and_evicts_least_recently_used():
    metrics = CountingMetrics()
    cache = LruCache("image", max_bytes=10 * 400, metrics=metrics)  # ten entries of 100 floats
    for i in range(10):
        cache.put(f"k{i}", entry(100, i))
    cache.get("k0")  # k0 is now the most recently used; k1 the least
    cache.put("k10", entry(100, 10))
    assert cache.get("k1") is None and cache.get("k0") is not None and cache.get("k10") is not None
    for i in range(11, 200):  # a stream of distinct images
        cache.put(f"k{i}", entry(100, i))
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 10 and cache.bytes == 4000
    assert metrics.get("evicted", "image") == 190
    assert metrics.sizes["image"] == 4000


def test_lru_refuses_an_entry_larger_than_the_budget():
    cache = LruCache("image", max_bytes=100, metrics=CountingMetrics())
    cache.put("small", entry(10))
    cache.put("huge", entry(1000))
    assert cache.get("huge") is None and cache.get("small") is not None


def test_lru_is_consistent_under_concurrent_use():
    cache = LruCache("prompt", max_bytes=50 * 40, metrics=CountingMetrics())

    def work(offset):
        for i in range(300):
            key = f"k{(i * 7 + offset) % 80}"
            if cache.get(key) is None:
                cache.put(key, entry(10, i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.bytes == sum(v["x"].numel() * 4 for v in cache._entries.values()) <= cache.max_bytes


def test_keys_differ_in_everything_that_changes_the_value():
    caches = EncodingCaches(CacheSettings(image_fingerprint="A", prompt_fingerprint="P"), CountingMetrics())
    other_weights = EncodingCaches(CacheSettings(image_fingerprint="B", prompt_fingerprint="Q"), CountingMetrics())
    image, other_image = encode(random_image(seed=1)), encode(random_image(seed=2))
    keys = {
        caches.image_key(image, 64, 64),
        caches.image_key(other_image, 64, 64),
        caches.image_key(image, 64, 96),
        caches.image_key(image, 96, 64),
        other_weights.image_key(image, 64, 64),
    }
    assert len(keys) == 5
    assert caches.image_key(image, 64, 64) == caches.image_key(bytes(image), 64, 64)
    assert len({caches.prompt_key("a"), caches.prompt_key("b"), other_weights.prompt_key("a")}) == 3


def make_request(image_seed=0, width=64, height=64, seed=5, prompt=b"a cat"):
    return parse_request(
        {
            "IMAGE": np.array([encode(random_image(seed=image_seed))], dtype=object),
            "PROMPT": np.array([prompt], dtype=object),
            "NUM_FRAMES": np.array([4], np.int32),
            "HEIGHT": np.array([height], np.int32),
            "WIDTH": np.array([width], np.int32),
            "NUM_INFERENCE_STEPS": np.array([3], np.int32),
            "SEED": np.array([seed], np.int64),
        },
        RequestSettings(min_size=32),
    )


@pytest.fixture
def cached_pipeline(local_pipeline):
    metrics = CountingMetrics()
    pipeline = I2VGenXL(local_pipeline.call_model, local_pipeline.scheduler_config,
                        local_pipeline.vae_scaling_factor, caches=EncodingCaches(CacheSettings(), metrics))
    return pipeline, metrics


def test_hit_gives_the_same_video_and_skips_the_image_encoders(cached_pipeline, local_pipeline):
    pipeline, metrics = cached_pipeline
    calls = pipeline.call_model.calls
    uncached = local_pipeline.generate(make_request()).numpy()
    before = dict(calls)
    miss = pipeline.generate(make_request()).numpy()
    assert calls["vae_encoder"] == before["vae_encoder"] + 1 and calls["image_encoder"] == before["image_encoder"] + 1
    hit = pipeline.generate(make_request(seed=5, prompt=b"a cat")).numpy()
    assert calls["vae_encoder"] == before["vae_encoder"] + 1 and calls["image_encoder"] == before["image_encoder"] + 1
    assert calls["text_encoder"] == before["text_encoder"] + 2  # "" and "a cat", each once
    assert miss.tobytes() == hit.tobytes() == uncached.tobytes()
    assert metrics.get("hit", "image") == 1 and metrics.get("miss", "image") == 1
    assert metrics.get("hit", "prompt") == 2 and metrics.get("miss", "prompt") == 2


def test_other_seed_and_prompt_reuse_the_image_but_not_the_video(cached_pipeline, local_pipeline):
    pipeline, metrics = cached_pipeline
    for request in (make_request(seed=6), make_request(prompt=b"a dog"), make_request(seed=5)):
        assert pipeline.generate(request).numpy().tobytes() == local_pipeline.generate(request).numpy().tobytes()
    assert metrics.get("miss", "image") == 1 and metrics.get("hit", "image") == 2


def test_no_wrong_hit_across_sizes_and_images(cached_pipeline, local_pipeline):
    pipeline, _ = cached_pipeline
    requests = [make_request(width=64, height=64), make_request(width=96, height=64),
                make_request(width=64, height=96), make_request(image_seed=9)]
    for request in requests * 2:
        assert pipeline.generate(request).numpy().tobytes() == local_pipeline.generate(request).numpy().tobytes()


def test_cache_off_switch(local_pipeline):
    metrics = CountingMetrics()
    pipeline = I2VGenXL(local_pipeline.call_model, local_pipeline.scheduler_config, local_pipeline.vae_scaling_factor,
                        caches=EncodingCaches(CacheSettings(enabled=False), metrics))
    calls = pipeline.call_model.calls
    before = calls["vae_encoder"]
    pipeline.generate(make_request())
    pipeline.generate(make_request())
    assert calls["vae_encoder"] == before + 2 and metrics.counts == {}


def test_settings_round_trip_through_parameters_and_the_redis_url_through_the_environment(tmp_path):
    settings = CacheSettings(enabled=False, image_max_bytes=5, redis_url="redis://:pw@x:1/0", image_fingerprint="f")
    parameters = settings.as_parameters()
    assert "redis://" not in json.dumps(parameters) and "pw" not in json.dumps(parameters)
    assert CacheSettings.from_parameters(parameters, {}) == dataclasses.replace(settings, redis_url="")
    assert CacheSettings.from_parameters(parameters, {"OPENSPEEDY_REDIS_URL": "redis://:pw@x:1/0"}) == settings
    secret = tmp_path / "redis-url"
    secret.write_text("redis://:pw@x:1/0\n")
    assert CacheSettings.from_parameters(parameters, {"OPENSPEEDY_REDIS_URL_FILE": str(secret)}) == settings


def test_a_redis_url_in_a_model_config_or_a_bad_one_is_refused_without_repeating_it(tmp_path):
    with pytest.raises(ValueError, match="cache_redis_url is refused.*OPENSPEEDY_REDIS_URL"):
        CacheSettings.from_parameters({"cache_redis_url": "redis://:pw@x:1/0"}, {})
    with pytest.raises(ValueError, match=r"OPENSPEEDY_REDIS_URL must start with redis://") as bad:
        CacheSettings.from_parameters({}, {"OPENSPEEDY_REDIS_URL": "http://:pw@x"})
    assert "pw" not in str(bad.value)
    with pytest.raises(ValueError, match="OPENSPEEDY_REDIS_URL_FILE names .* cannot be read"):
        CacheSettings.from_parameters({}, {"OPENSPEEDY_REDIS_URL_FILE": str(tmp_path / "missing")})
