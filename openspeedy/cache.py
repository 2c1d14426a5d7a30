"""The encoding caches: work that depends only on the image or only on a prompt, done once.

Two caches, each a byte-bounded least-recently-used map in this process, optionally backed by Redis so
that every orchestrator process and server replica shares one cache:

* ``image``: the CLIP image embedding and the VAE posterior *parameters* of one image at one target
  size (not a drawn sample: the request's seed draws it, so a hit and a miss give the same video);
* ``prompt``: the text embedding of one prompt (the negative prompt is nearly always the same).

Keys are SHA-256 digests of everything that determines the value: the encoded image bytes, the target
width and height, the prompt text, and a fingerprint of the weights that computed it, so a re-export
with other weights never serves an old entry.

The Redis URL (it may carry a password) is never a model parameter: any client can read a model's config
(``GET /v2/models/<model>/config``). Each orchestrator process reads it at load from its environment,
``OPENSPEEDY_REDIS_URL`` or a file named by ``OPENSPEEDY_REDIS_URL_FILE`` (a mounted Secret).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from openspeedy.model_parameters import flag

Entry = dict[str, torch.Tensor]


class CacheMetrics(Protocol):
    """Where a cache reports what happens to it (Prometheus counters in Triton, plain counts in tests)."""

    def hit(self, cache: str) -> None: ...
    def miss(self, cache: str) -> None: ...
    def evicted(self, cache: str, count: int) -> None: ...
    def bytes_held(self, cache: str, size: int) -> None: ...
    def backend_error(self, cache: str) -> None: ...


@dataclass
class CountingMetrics:
    """CacheMetrics that keeps plain counts (tests, benchmarks, in-process use)."""

    def __post_init__(self):
        self.counts: dict[tuple[str, str], int] = {}
        self.sizes: dict[str, int] = {}

    def _add(self, what: str, cache: str, n: int = 1) -> None:
        self.counts[(what, cache)] = self.counts.get((what, cache), 0) + n

    def hit(self, cache: str) -> None:
        self._add("hit", cache)

    def miss(self, cache: str) -> None:
        self._add("miss", cache)

    def evicted(self, cache: str, count: int) -> None:
        self._add("evicted", cache, count)

    def bytes_held(self, cache: str, size: int) -> None:
        self.sizes[cache] = size

    def backend_error(self, cache: str) -> None:
        self._add("backend_error", cache)

    def get(self, what: str, cache: str) -> int:
        return self.counts.get((what, cache), 0)


def entry_bytes(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class LruCache:
    """A least-recently-used map bounded in bytes; safe under concurrent use from several threads."""

    def __init__(self, name: str, max_bytes: int, metrics: CacheMetrics):
        self.name, self.max_bytes, self.metrics = name, max_bytes, metrics
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry) -> None:
        size = entry_bytes(entry)
        if size > self.max_bytes:
            return  # larger than the whole budget: caching it would evict everything for nothing
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= entry_bytes(old)
            self._entries[key] = entry
            self._bytes += size
            evicted = 0
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= entry_bytes(dropped)
                evicted += 1
            held = self._bytes
        if evicted:
            self.metrics.evicted(self.name, evicted)
        self.metrics.bytes_held(self.name, held)


class RedisStore:
    """The shared level: entries as safetensors bytes with a TTL. Never raises: a Redis failure is
    counted, and Redis is left alone for ``retry_after_s`` so a dead server costs one timeout, not one
    per request."""

    def __init__(self, url: str, ttl_s: int, metrics: CacheMetrics, retry_after_s: float = 5.0,
                 timeout_s: float = 0.5):
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self.ttl_s, self.metrics, self.retry_after_s = ttl_s, metrics, retry_after_s
        self._down_until = 0.0

    def _guarded(self, cache: str, action: Callable[[], object]) -> object | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            return action()
        except Exception:  # noqa: BLE001 - any Redis failure degrades to computing locally
            self.metrics.backend_error(cache)
            self._down_until = time.monotonic() + self.retry_after_s
            return None

    def get(self, cache: str, key: str) -> Entry | None:
        data = self._guarded(cache, lambda: self.client.get(key))
        return load_tensors(data) if data else None

    def put(self, cache: str, key: str, entry: Entry) -> None:
        data = save_tensors({name: t.detach().cpu().contiguous() for name, t in entry.items()})
        self._guarded(cache, lambda: self.client.set(key, data, ex=self.ttl_s))


REDIS_URL_ENV = "OPENSPEEDY_REDIS_URL"
REDIS_URL_FILE_ENV = "OPENSPEEDY_REDIS_URL_FILE"
# Refused in a model config: configs are readable by every client.
SECRET_PARAMETERS = ("cache_redis_url",)


def redis_url_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """The shared cache's URL from a mounted Secret file or the environment; empty: no shared cache."""
    environ = os.environ if environ is None else environ
    if environ.get(REDIS_URL_FILE_ENV):
        path = Path(environ[REDIS_URL_FILE_ENV])
        try:
            url = path.read_text().strip()
        except OSError as error:
            raise ValueError(f"${REDIS_URL_FILE_ENV} names {path}, which cannot be read: {error}") from error
        source = f"the file {path} (${REDIS_URL_FILE_ENV})"
    else:
        url, source = environ.get(REDIS_URL_ENV, "").strip(), f"${REDIS_URL_ENV}"
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        # the value itself is not repeated: it may hold a password
        raise ValueError(f"the Redis URL in {source} must start with redis://, rediss:// or unix://")
    return url


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    image_max_bytes: int = 256 << 20
    prompt_max_bytes: int = 64 << 20
    redis_url: str = ""  # empty: this process only. From the environment, never from the model's config
    redis_ttl_s: int = 24 * 3600
    image_fingerprint: str = ""  # of the weights behind the image entries (image encoder, VAE)
    prompt_fingerprint: str = ""  # of the weights behind the prompt entries (text encoder, tokenizer)

    def as_parameters(self) -> dict[str, str]:
        return {
            "cache_enabled": str(self.enabled).lower(),
            "cache_image_max_bytes": str(self.image_max_bytes),
            "cache_prompt_max_bytes": str(self.prompt_max_bytes),
            "cache_redis_ttl_s": str(self.redis_ttl_s),
            "image_weights_fingerprint": self.image_fingerprint,
            "prompt_weights_fingerprint": self.prompt_fingerprint,
        }

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, str], environ: Mapping[str, str] | None = None
    ) -> "CacheSettings":
        """The settings of a model config's parameters, with the Redis URL of ``environ`` (os.environ)."""
        secrets_found = [name for name in SECRET_PARAMETERS if parameters.get(name)]
        if secrets_found:
            raise ValueError(
                f"model config parameter {secrets_found[0]} is refused: any client can read a model's config, so "
                f"the Redis URL comes from ${REDIS_URL_ENV} or a file named by ${REDIS_URL_FILE_ENV}; remove it "
                "from config.pbtxt (export the repository again)"
            )
        return cls(
            enabled=flag(parameters, "cache_enabled", default=True),
            image_max_bytes=int(parameters.get("cache_image_max_bytes", cls.image_max_bytes)),
            prompt_max_bytes=int(parameters.get("cache_prompt_max_bytes", cls.prompt_max_bytes)),
            redis_url=redis_url_from_environment(environ),
            redis_ttl_s=int(parameters.get("cache_redis_ttl_s", cls.redis_ttl_s)),
            image_fingerprint=parameters.get("image_weights_fingerprint", ""),
            prompt_fingerprint=parameters.get("prompt_weights_fingerprint", ""),
        )


def _digest(*parts: bytes | str | int) -> str:
    sha = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8")
        sha.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two part lists collide
        sha.update(data)
    return sha.hexdigest()


class EncodingCaches:
    """The two caches the orchestrator consults: ``lookup`` returns an entry or computes and stores it."""

    KEY_PREFIX = "openspeedy:v1"

    def __init__(self, settings: CacheSettings, metrics: CacheMetrics):
        self.settings, self.metrics = settings, metrics
        self.local = {
            "image": LruCache("image", settings.image_max_bytes, metrics),
            "prompt": LruCache("prompt", settings.prompt_max_bytes, metrics),
        }
        self.shared = RedisStore(settings.redis_url, settings.redis_ttl_s, metrics) if settings.redis_url else None

    def image_key(self, image_bytes: bytes, width: int, height: int) -> str:
        return f"{self.KEY_PREFIX}:image:" + _digest(self.settings.image_fingerprint, image_bytes, width, height)

    def prompt_key(self, text: str) -> str:
        return f"{self.KEY_PREFIX}:prompt:" + _digest(self.settings.prompt_fingerprint, text)

    def lookup(self, cache: str, key: str, compute: Callable[[], Entry], device: torch.device) -> tuple[Entry, bool]:
        """The entry, and whether it came from a cache (local or shared) instead of ``compute``."""
        if not self.settings.enabled:
            return compute(), False
        local = self.local[cache]
        entry = local.get(key)
        if entry is None and self.shared is not None:
            entry = self.shared.get(cache, key)
            if entry is not None:
                entry = {name: t.to(device) for name, t in entry.items()}
                local.put(key, entry)
        if entry is not None:
            self.metrics.hit(cache)
            return entry, True
        self.metrics.miss(cache)
        entry = compute()
        local.put(key, entry)
        if self.shared is not None:
            self.shared.put(cache, key, entry)
        return entry, False


def fingerprint_files(*folders) -> str:
    """SHA-256 over the names and contents of every file in the folders: identifies a set of weights."""
    sha = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            sha.update(str(path.relative_to(folder)).encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
    return sha.hexdigest()

