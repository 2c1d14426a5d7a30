"""When a video job is expected to be done, from the pace of the jobs running now.

A running job's pace is its own: seconds per denoising step since its first step. A queued job's estimate
plays the queue forward: the jobs ahead of it start in order as running ones finish, and each takes its
steps at the running jobs' pace, scaled by its frames x height x width (a step's work grows about
linearly with them at these sizes). The decode after the last step is not counted. Without a running job
that has reported two steps there is no pace, and no estimate.

The same estimate tells a polling client when to ask again (``poll_after_ms``, the ``openai-poll-after-ms``
header). The official client's poll helper reads that header once, from the first answer, and then polls at
that period to the end (without it: every second), so the hint is a period that keeps the wait after the
video is done small against the whole wait: a tenth of the time still expected, within bounds.
"""

from __future__ import annotations

import heapq
import statistics
import time

from openspeedy.api.jobs import Job


def volume(job: Job) -> int:
    """Frames x height x width: what a denoising step's work grows with."""
    options = job.options
    return int(options["num_frames"]) * int(options["height"]) * int(options["width"])


def pace(running: list[Job]) -> float | None:
    """Seconds per step per frame-pixel, the median over the running jobs that have a pace."""
    paces = [job.seconds_per_step / volume(job) for job in running if job.seconds_per_step]
    return statistics.median(paces) if paces else None


def queued_completion(job: Job, ahead: list[Job], running: list[Job], now: float | None = None) -> int | None:
    """When ``job`` (queued behind ``ahead``, in the order workers take them) is expected to be done, as a
    Unix time; None without a pace. Each running job is a worker that is busy until its own estimate."""
    now = time.time() if now is None else now
    per_volume = pace(running)
    if per_volume is None:
        return None

    def duration(other: Job) -> float:
        return int(other.options["num_inference_steps"]) * per_volume * volume(other)

    # When each worker is free; never before now (a job past its estimate is taken as ending now).
    free = [max(now, other.estimated_completed_at or now + duration(other)) for other in running]
    heapq.heapify(free)
    for other in [*ahead, job]:
        done = heapq.heappop(free) + duration(other)
        heapq.heappush(free, done)
    return round(done)


# The poll hint's bounds: no closer than a few requests a second per client, no longer than 2 s (a
# client that keeps its first hint waits on average half of it after the video is done).
POLL_AFTER_MS = (250, 2000)
POLL_WITHOUT_ESTIMATE_MS = 500


def poll_after_ms(estimated_completed_at: int | None, now: float | None = None) -> int:
    """How long a client should wait before retrieving an unfinished job again: a tenth of the time it is
    still expected to take, within POLL_AFTER_MS; without an estimate (no job has a pace yet),
    POLL_WITHOUT_ESTIMATE_MS."""
    if estimated_completed_at is None:
        return POLL_WITHOUT_ESTIMATE_MS
    now = time.time() if now is None else now
    low, high = POLL_AFTER_MS
    return int(min(high, max(low, (estimated_completed_at - now) * 1000 / 10)))
