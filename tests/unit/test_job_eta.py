"""The job API's estimates (openspeedy/api/eta.py): a queued job's completion played forward from the
running jobs' pace, each job scaled by its own frames x height x width and steps."""

from __future__ import annotations

import pytest

from openspeedy.api.eta import POLL_AFTER_MS, POLL_WITHOUT_ESTIMATE_MS, pace, poll_after_ms, queued_completion
from openspeedy.api.jobs import Job

NOW = 1_000_000.0


def job(frames: int = 16, size: int = 512, steps: int = 50, seconds_per_step: float | None = None,
        done_at: int | None = None) -> Job:
    made = Job(id=f"video_{frames}_{size}_{steps}", owner="o", created_at=0, model="m", size=f"{size}x{size}",
               seconds="2", prompt="p", options={"num_frames": frames, "height": size, "width": size,
                                                 "num_inference_steps": steps})
    if seconds_per_step is not None:
        made.start()
        made.seconds_per_step, made.estimated_completed_at = seconds_per_step, done_at
    return made


def test_a_job_next_in_line_is_done_one_of_its_durations_after_the_first_running_job():
    running = [job(seconds_per_step=0.1, done_at=int(NOW) + 30), job(seconds_per_step=0.1, done_at=int(NOW) + 10)]
    assert queued_completion(job(steps=50), [], running, NOW) == NOW + 10 + 50 * 0.1


def test_the_jobs_ahead_take_the_free_workers_first_in_order():
    running = [job(seconds_per_step=0.1, done_at=int(NOW) + 30), job(seconds_per_step=0.1, done_at=int(NOW) + 10)]
    ahead = [job(steps=100), job(steps=20)]  # 10 s: ends at 20; 2 s: starts at 20 (the worker freed first)
    assert queued_completion(job(steps=50), ahead, running, NOW) == NOW + 22 + 5


def test_a_larger_video_takes_longer_at_the_same_pace():
    running = [job(seconds_per_step=0.1, done_at=int(NOW) + 10)]
    small, large = job(size=512), job(frames=32, size=512)
    assert queued_completion(large, [], running, NOW) - NOW - 10 == 2 * (queued_completion(small, [], running, NOW)
                                                                         - NOW - 10)


def test_no_running_job_with_a_pace_means_no_estimate():
    assert queued_completion(job(), [], [], NOW) is None
    assert queued_completion(job(), [], [job(seconds_per_step=None)], NOW) is None
    assert pace([job(seconds_per_step=0.2), job(frames=32, seconds_per_step=0.2)]) == pytest.approx(pace(
        [job(frames=16, seconds_per_step=0.15)]))  # the median of 0.2/v and 0.1/v


def test_a_running_job_without_its_own_estimate_counts_its_whole_duration():
    running = [job(seconds_per_step=0.1, done_at=int(NOW) + 10), job(steps=30, seconds_per_step=None)]
    # Two workers: one free at +10, one at +3 (the second job's 30 steps at the first's pace).
    assert queued_completion(job(steps=50), [], running, NOW) == NOW + 3 + 5


def test_a_worker_past_its_estimate_is_taken_as_free_now():
    running = [job(seconds_per_step=0.1, done_at=int(NOW) - 60)]
    assert queued_completion(job(steps=50), [], running, NOW) == NOW + 5


def test_the_poll_hint_is_a_tenth_of_the_time_left_within_its_bounds():
    low, high = POLL_AFTER_MS
    assert poll_after_ms(None, NOW) == POLL_WITHOUT_ESTIMATE_MS
    assert poll_after_ms(int(NOW) + 12, NOW) == 1200
    assert poll_after_ms(int(NOW) + 600, NOW) == high  # a long wait: still asked about every few seconds
    assert poll_after_ms(int(NOW) - 3, NOW) == low  # past its estimate (the decode): soon, not at once
