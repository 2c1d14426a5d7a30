"""The encoding caches shared through a real redis-server: round trip with TTL, an outage counted
rather than raised, two pipelines sharing entries."""

import torch

from openspeedy.cache import CacheSettings, CountingMetrics, EncodingCaches, RedisStore
from openspeedy.pipeline import I2VGenXL
from tests.unit.test_cache import make_request


def test_redis_store_round_trip_with_ttl(redis_server):
    metrics = CountingMetrics()
    store = RedisStore(redis_server.url, ttl_s=60, metrics=metrics)
    value = {"embeds": torch.randn(1, 16), "posterior": torch.randn(1, 8, 4, 4)}
    store.put("image", "key1", value)
    back = store.get("image", "key1")
    assert all(torch.equal(back[k], value[k]) for k in value)
    assert 0 < store.client.ttl("key1") <= 60
    assert store.get("image", "missing") is None and metrics.counts == {}


def test_redis_down_is_counted_not_raised(redis_server):
    metrics = CountingMetrics()
    store = RedisStore(redis_server.url, ttl_s=60, metrics=metrics, retry_after_s=30)
    redis_server.stop()
    assert store.get("image", "k") is None
    store.put("image", "k", {"x": torch.zeros(2)})  # within retry_after: not even tried
    assert metrics.get("backend_error", "image") == 1


def test_two_pipelines_share_one_redis(redis_server, local_pipeline):
    def pipeline(fingerprint):
        metrics = CountingMetrics()
        caches = EncodingCaches(CacheSettings(redis_url=redis_server.url, image_fingerprint=fingerprint), metrics)
        return I2VGenXL(local_pipeline.call_model, local_pipeline.scheduler_config,
                        local_pipeline.vae_scaling_factor, caches=caches), metrics

    (first, _), (second, second_metrics) = pipeline("w1"), pipeline("w1")
    (other_weights, other_metrics) = pipeline("w2")
    video = first.generate(make_request()).numpy()
    assert second.generate(make_request()).numpy().tobytes() == video.tobytes()
    assert second_metrics.get("hit", "image") == 1 and second_metrics.get("miss", "image") == 0
    other_weights.generate(make_request())
    assert other_metrics.get("miss", "image") == 1  # another fingerprint never reads the old entry
