"""Workers: threads that take queued jobs and run each through the streaming model.

A job's progress follows the server's denoising steps. While a job runs, its worker renews the job's
lease a few times a second and, when the job was deleted (on any replica), sets the client's cancel
event: the server then stops within one denoising step. A worker that is stopped (the API process
shuts down) cancels its job and puts it back in the queue, where any replica takes it again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from openspeedy.api.jobs import COMPLETED, FAILED, QUEUED
from openspeedy.client.api import Client, GenerationCancelled, GenerationError, Progress

log = logging.getLogger("openspeedy.api")

# How often an idle worker looks at the queue, and a running one at its job (deleted? lease renewed).
IDLE_POLL_S = 0.2
WATCH_S = 0.25
# How often a worker looks for jobs whose worker died (their lease ran out).
REAP_S = 5.0
# A running job's live preview (GET /v1/videos/{id}/content?variant=thumbnail) every this many steps, or at
# its last step when it has fewer.
PREVIEW_INTERVAL = 5


def job_error(error: GenerationError) -> dict:
    """The official error object of a job that failed on the server."""
    code = "server_busy" if error.retryable else "invalid_request" if error.input_name else "generation_failed"
    return {"code": code, "message": str(error), "param": error.input_name.lower() if error.input_name else None}


@dataclass
class WorkerOptions:
    server_url: str  # Triton's gRPC address
    model: str  # the streaming model
    concurrency: int = 2  # jobs this process runs at once
    keep_s: int = 3600  # how long a finished job and its video are kept


class Workers:
    def __init__(self, jobs, options: WorkerOptions):
        self.jobs, self.options = jobs, options
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_reap = 0.0

    def start(self) -> None:
        for number in range(self.options.concurrency):
            thread = threading.Thread(target=self._loop, name=f"openspeedy-api-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancels the jobs running here and queues them again, for another process to take."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self) -> None:
        with Client(self.options.server_url, model=self.options.model, stream_model=self.options.model) as client:
            while not self._stop.is_set():
                try:
                    self._reap()
                    job_id = self.jobs.take()
                    if job_id is None:
                        self._stop.wait(IDLE_POLL_S)
                        continue
                    self._run(client, job_id)
                except Exception:  # noqa: BLE001 - a store outage must not end the worker; it tries again
                    log.exception("worker error; trying again")
                    self._stop.wait(1.0)

    def _reap(self) -> None:
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + REAP_S
            for job_id in self.jobs.requeue_abandoned(self.options.keep_s):
                log.warning("job %s: its worker stopped renewing it; queued again", job_id)

    def _run(self, client: Client, job_id: str) -> None:
        job, image = self.jobs.get(job_id), self.jobs.image(job_id)
        if job is None or image is None:  # deleted before it started
            return
        job.start()
        if not self.jobs.save(job):
            return
        cancel, done = threading.Event(), threading.Event()
        watcher = threading.Thread(target=self._watch, args=(job_id, cancel, done), daemon=True)
        watcher.start()
        first_step: list[tuple[int, float]] = []  # (step, time) of the first step reported: the pace starts there

        def on_progress(update: Progress) -> None:
            if update.waiting:  # on the server, behind other requests: its place, until its first step
                if job.queue_position != update.ahead:
                    job.queue_position = update.ahead
                    self.jobs.save(job)
                return
            job.queue_position = None
            if update.preview is not None:
                self.jobs.save_preview(job_id, update.preview)
            now = time.time()
            shown = (job.progress, job.estimated_completed_at)
            job.progress = min(99, 100 * update.step // max(update.total, 1))  # 100 once the video is stored
            if not first_step:
                first_step.append((update.step, now))
            elif update.step > first_step[0][0]:
                job.seconds_per_step = (now - first_step[0][1]) / (update.step - first_step[0][0])
                job.estimated_completed_at = round(now + (update.total - update.step) * job.seconds_per_step)
            if (job.progress, job.estimated_completed_at) != shown:
                self.jobs.save(job)

        steps = job.options["num_inference_steps"]
        try:
            video = client.generate_stream(image, job.prompt, on_progress=on_progress, cancel=cancel, frames=False,
                                           mp4=True, preview_interval=min(PREVIEW_INTERVAL, steps), **job.options)
        except GenerationCancelled:
            if self._stop.is_set():
                job.status, job.progress, job.queue_position = QUEUED, 0, None
                self.jobs.requeue(job)
                log.info("job %s: queued again, this process is stopping", job_id)
            return  # else it was deleted: nothing is left to keep
        except GenerationError as error:
            job.finish(FAILED, self.options.keep_s, job_error(error))
            self.jobs.finish(job, None)
            log.info("job %s failed: %s", job_id, error)
            return
        finally:
            done.set()
            watcher.join()
        job.finish(COMPLETED, self.options.keep_s)
        self.jobs.finish(job, video.mp4)

    def _watch(self, job_id: str, cancel: threading.Event, done: threading.Event) -> None:
        while not done.wait(WATCH_S):
            if self._stop.is_set():
                cancel.set()
                return
            try:
                alive = self.jobs.renew(job_id)
            except Exception:  # noqa: BLE001 - a short store outage does not stop the video
                log.warning("job %s: could not renew its lease", job_id, exc_info=True)
                continue
            if not alive:
                cancel.set()
                return

