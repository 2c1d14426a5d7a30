"""The video jobs: what a job is, and the two stores that keep them.

``RedisJobs`` keeps jobs, uploads, results and the queue of pending jobs in Redis, so every replica of
the API sees every job, any replica's workers take from one queue, and jobs outlive an API process.
A worker holds a lease on the job it runs; a job whose lease ran out (its process died) goes back to
the queue. ``MemoryJobs`` does the same inside one process, for a single API without Redis.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
FINISHED = (COMPLETED, FAILED)
# A job whose worker died is sent again at most this many times, then fails.
MAX_ATTEMPTS = 3


def new_job_id() -> str:
    return f"video_{secrets.token_hex(16)}"


@dataclass
class Job:
    id: str
    owner: str  # a digest of the API key that created it: only that key sees it
    created_at: int
    model: str
    size: str
    seconds: str
    prompt: str
    options: dict[str, Any]  # Client.generate_stream's keyword arguments, every default resolved
    status: str = QUEUED
    progress: int = 0
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    # While it runs (its worker sets them from its steps, openspeedy/api/eta.py): its pace and its estimate.
    seconds_per_step: float | None = None
    estimated_completed_at: int | None = None
    # Taken by a worker but waiting in the server's line (behind other clients' requests): its place there.
    queue_position: int | None = None

    def public(self) -> dict[str, Any]:
        """The job as the API shows it: the official ``Video`` object, a running job's
        ``estimated_completed_at`` once it has one, and its ``queue_position`` while the server's line holds it."""
        shown = {
            "id": self.id, "object": "video", "model": self.model, "status": self.status, "progress": self.progress,
            "created_at": self.created_at, "completed_at": self.completed_at, "expires_at": self.expires_at,
            "prompt": self.prompt, "size": self.size, "seconds": self.seconds, "remixed_from_video_id": None,
            "error": self.error,
        }
        if self.status == IN_PROGRESS and self.estimated_completed_at is not None:
            shown["estimated_completed_at"] = self.estimated_completed_at
        if self.status == IN_PROGRESS and self.queue_position is not None:
            shown["queue_position"] = self.queue_position
        return shown

    def start(self) -> None:
        """Running from now on, with no pace yet (a job queued again starts afresh)."""
        self.status, self.progress, self.seconds_per_step, self.estimated_completed_at = IN_PROGRESS, 0, None, None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        return cls(**json.loads(text))

    def finish(self, status: str, keep_s: int, error: dict[str, Any] | None = None) -> None:
        now = int(time.time())
        self.status, self.error, self.completed_at, self.expires_at = status, error, now, now + keep_s
        if status == COMPLETED:
            self.progress = 100


class UnknownCursor(KeyError):
    """A list's ``after`` names no job of this owner."""


def page(jobs: list[Job], after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
    """One page of ``jobs`` (oldest first), the official API's way: newest first unless ``order`` is
    "asc", starting after the job ``after``; and whether more follow."""
    ordered = jobs if order == "asc" else jobs[::-1]
    start = 0
    if after:
        ids = [job.id for job in ordered]
        if after not in ids:
            raise UnknownCursor(after)
        start = ids.index(after) + 1
    return ordered[start:start + limit], len(ordered) > start + limit


class MemoryJobs:
    """The jobs of one API process, lost when it stops."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # in creation order
        self._inputs: dict[str, bytes] = {}
        self._contents: dict[str, bytes] = {}
        self._previews: dict[str, bytes] = {}  # the latest live preview (PNG) of a job
        self._queue: deque[str] = deque()

    def _expire(self) -> None:
        now = time.time()
        for job in [job for job in self._jobs.values() if job.expires_at is not None and job.expires_at <= now]:
            self._drop(job.id)

    def _drop(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._inputs.pop(job_id, None)
        self._contents.pop(job_id, None)
        self._previews.pop(job_id, None)

    def create(self, job: Job, image: bytes, max_in_flight: int) -> bool:
        """Adds the job and queues it, unless its owner has ``max_in_flight`` unfinished jobs already."""
        with self._lock:
            in_flight = sum(1 for j in self._jobs.values() if j.owner == job.owner and j.status not in FINISHED)
            if in_flight >= max_in_flight:
                return False
            self._jobs[job.id], self._inputs[job.id] = dataclasses.replace(job), image
            self._queue.appendleft(job.id)
            return True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            return None if job is None else dataclasses.replace(job)

    def owned(self, owner: str) -> list[Job]:
        with self._lock:
            self._expire()
            return [dataclasses.replace(job) for job in self._jobs.values() if job.owner == owner]

    def save(self, job: Job) -> bool:
        """Writes the job back, unless it was deleted meanwhile."""
        with self._lock:
            if job.id not in self._jobs:
                return False
            self._jobs[job.id] = dataclasses.replace(job)
            return True

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._drop(job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)

    def ahead(self, job_id: str) -> list[Job] | None:
        """The queued jobs workers take before this one, in that order; None when it is not queued."""
        with self._lock:
            if job_id not in self._queue:
                return None
            queued = list(self._queue)
            later_first = queued[queued.index(job_id) + 1:]  # workers take from the right end
            return [dataclasses.replace(self._jobs[i]) for i in reversed(later_first) if i in self._jobs]

    def running(self) -> list[Job]:
        with self._lock:
            return [dataclasses.replace(job) for job in self._jobs.values() if job.status == IN_PROGRESS]

    def take(self) -> str | None:
        """The oldest queued job's id, now this worker's; None when the queue is empty."""
        with self._lock:
            self._expire()  # workers call this a few times a second: finished videos go when they expire
            return self._queue.pop() if self._queue else None

    def renew(self, job_id: str) -> bool:
        """Whether the job still exists (a worker stops one that was deleted)."""
        with self._lock:
            return job_id in self._jobs

    def image(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._inputs.get(job_id)

    def finish(self, job: Job, content: bytes | None) -> None:
        with self._lock:
            if job.id in self._jobs:
                self._jobs[job.id] = dataclasses.replace(job)
                self._inputs.pop(job.id, None)
                if content is not None:
                    self._contents[job.id] = content

    def content(self, job_id: str) -> bytes | None:
        with self._lock:
            self._expire()
            return self._contents.get(job_id)

    def save_preview(self, job_id: str, png: bytes) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._previews[job_id] = png

    def preview(self, job_id: str) -> bytes | None:
        with self._lock:
            self._expire()
            return self._previews.get(job_id)

    def requeue(self, job: Job) -> None:
        """Puts a job a worker gave up (the process is stopping) first in line again."""
        if self.save(job):
            with self._lock:
                self._queue.append(job.id)

    def requeue_abandoned(self, keep_s: int) -> list[str]:
        return []  # one process: its workers' jobs end with it


# Creates a job unless its owner is at the limit. The owner's set of unfinished jobs is pruned of jobs
# that no longer exist first (deleted or expired), so a count never stays too high; so are the oldest
# entries of the owner's index, so that it does not grow with expired jobs of an owner who never lists.
_CREATE = """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then redis.call('SREM', KEYS[1], id) end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, 9)) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then redis.call('ZREM', KEYS[4], id) end
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[6]), ARGV[4])
redis.call('LPUSH', KEYS[5], ARGV[4])
return 1
"""

# Moves the oldest queued job to the running list and takes its lease, in one step: a job is never
# running without a lease (which would look abandoned) nor leased twice.
_TAKE = """
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if id then redis.call('SET', ARGV[1] .. id, '1', 'EX', ARGV[2]) end
return id
"""


@dataclass
class RedisJobs:
    """The jobs in Redis at ``url``: shared by every API replica, kept across restarts."""

    url: str
    lease_s: int = 30
    prefix: str = "openspeedy:api:v1:"
    client: Any = field(init=False, repr=False)

    def __post_init__(self):
        import redis

        self.client = redis.Redis.from_url(self.url, socket_timeout=10, health_check_interval=30)
        self._create = self.client.register_script(_CREATE)
        self._take = self.client.register_script(_TAKE)

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def create(self, job: Job, image: bytes, max_in_flight: int) -> bool:
        keys = [self._key("inflight", job.owner), self._key("job", job.id), self._key("input", job.id),
                self._key("jobs", job.owner), self._key("queue"), self._key("seq")]
        return bool(self._create(keys=keys, args=[max_in_flight, job.to_json(), image, job.id, self._key("job") + ":"]))

    def get(self, job_id: str) -> Job | None:
        text = self.client.get(self._key("job", job_id))
        return None if text is None else Job.from_json(text)

    def owned(self, owner: str) -> list[Job]:
        index = self._key("jobs", owner)
        ids = [i.decode() for i in self.client.zrange(index, 0, -1)]
        if not ids:
            return []
        texts = self.client.mget([self._key("job", i) for i in ids])
        gone = [i for i, text in zip(ids, texts) if text is None]  # expired or deleted
        if gone:
            self.client.zrem(index, *gone)
        return [Job.from_json(text) for text in texts if text is not None]

    def save(self, job: Job) -> bool:
        # XX: only while the job exists, so a worker's update never brings back a deleted job.
        return bool(self.client.set(self._key("job", job.id), job.to_json(), xx=True, keepttl=True))

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        with self.client.pipeline() as pipe:
            pipe.delete(self._key("job", job_id), self._key("input", job_id), self._key("content", job_id),
                        self._key("preview", job_id))
            pipe.lrem(self._key("queue"), 0, job_id)
            if job is not None:
                pipe.srem(self._key("inflight", job.owner), job_id)
                pipe.zrem(self._key("jobs", job.owner), job_id)
            pipe.execute()

    def _jobs(self, ids: list[bytes]) -> list[Job]:
        texts = self.client.mget([self._key("job", i.decode()) for i in ids]) if ids else []
        return [Job.from_json(text) for text in texts if text is not None]  # None: deleted meanwhile

    def ahead(self, job_id: str) -> list[Job] | None:
        """The queued jobs workers take before this one, in that order; None when it is not queued."""
        queued = self.client.lrange(self._key("queue"), 0, -1)
        if job_id.encode() not in queued:
            return None
        later_first = queued[queued.index(job_id.encode()) + 1:]  # workers take from the right end
        return self._jobs(later_first[::-1])

    def running(self) -> list[Job]:
        return [job for job in self._jobs(self.client.lrange(self._key("running"), 0, -1)) if job.status == IN_PROGRESS]

    def take(self) -> str | None:
        job_id = self._take(keys=[self._key("queue"), self._key("running")],
                            args=[self._key("lease") + ":", self.lease_s])
        return None if job_id is None else job_id.decode()

    def renew(self, job_id: str) -> bool:
        with self.client.pipeline() as pipe:
            pipe.exists(self._key("job", job_id))
            pipe.set(self._key("lease", job_id), "1", ex=self.lease_s)
            exists, _ = pipe.execute()
        return bool(exists)

    def image(self, job_id: str) -> bytes | None:
        return self.client.get(self._key("input", job_id))

    def finish(self, job: Job, content: bytes | None) -> None:
        ttl = max(1, job.expires_at - int(time.time())) if job.expires_at else None
        with self.client.pipeline() as pipe:  # MULTI/EXEC: all of it or nothing
            pipe.set(self._key("job", job.id), job.to_json(), xx=True, ex=ttl)
            if content is not None:
                pipe.set(self._key("content", job.id), content, ex=ttl)
            if ttl is not None:
                pipe.expire(self._key("preview", job.id), ttl)  # goes with the job
            pipe.delete(self._key("input", job.id), self._key("lease", job.id))
            pipe.srem(self._key("inflight", job.owner), job.id)
            pipe.lrem(self._key("running"), 0, job.id)
            updated, *_ = pipe.execute()
        if not updated:  # deleted while it ran: its result goes too
            self.client.delete(self._key("content", job.id), self._key("preview", job.id))

    def content(self, job_id: str) -> bytes | None:
        return self.client.get(self._key("content", job_id))

    def save_preview(self, job_id: str, png: bytes) -> None:
        # Until the job's end gives it the job's own expiry; a preview of a job whose worker died without
        # ending it goes after 20 leases.
        with self.client.pipeline() as pipe:
            pipe.exists(self._key("job", job_id))
            pipe.set(self._key("preview", job_id), png, ex=max(self.lease_s, 1) * 20)
            exists, _ = pipe.execute()
        if not exists:  # deleted meanwhile
            self.client.delete(self._key("preview", job_id))

    def preview(self, job_id: str) -> bytes | None:
        return self.client.get(self._key("preview", job_id))

    def requeue(self, job: Job) -> None:
        with self.client.pipeline() as pipe:
            pipe.lrem(self._key("running"), 0, job.id)
            pipe.delete(self._key("lease", job.id))
            pipe.execute()
        if self.save(job):
            self.client.rpush(self._key("queue"), job.id)  # the right end is taken next

    def requeue_abandoned(self, keep_s: int) -> list[str]:
        """Jobs whose worker stopped renewing its lease (its process died) are queued again first, or fail
        after MAX_ATTEMPTS; returns their ids. Any replica may run this: LREM lets only one act on a job."""
        moved = []
        for raw in self.client.lrange(self._key("running"), 0, -1):
            job_id = raw.decode()
            if self.client.exists(self._key("lease", job_id)) or not self.client.lrem(self._key("running"), 1, job_id):
                continue
            job = self.get(job_id)
            if job is None:
                continue
            moved.append(job_id)
            job.status, job.progress, job.attempts = QUEUED, 0, job.attempts + 1
            if job.attempts >= MAX_ATTEMPTS:
                job.finish(FAILED, keep_s,
                           {"code": "worker_lost", "message": f"the API process running it stopped {job.attempts} "
                                                              "times; not tried again"})
                self.finish(job, None)
            elif self.save(job):
                self.client.rpush(self._key("queue"), job_id)
        return moved
