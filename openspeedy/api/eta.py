"""When a video job is expected to be done, from the pace of the jobs running now.

A running job's pace is its own: seconds per denoising step since its first step. A queued job's estimate
plays the queue forward: the jobs ahead of it start in order as running ones finish, and each takes its
steps at the running jobs' pace, scaled by its frames x height x width (a step's work grows about
linearly with them at these sizes). The decode after the last step is not counted. Without a running job
that has reported two steps there is no pace, and no estimate.
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
