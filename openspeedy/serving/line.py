"""The stream model's own queue (its "line"): where a streamed request waits, knowing its place.

A request that waits in Triton's scheduler queue is invisible to the model until it starts, so nothing can
be sent to it. The stream model therefore takes each request at once and keeps it here; one worker thread
runs them one at a time, in arrival order, while every waiting request is told how many requests are ahead
of it and when it is expected to start, whenever that changes and every REFRESH_S. It keeps what Triton's
queue gave: a bound (past it a request is refused with Triton's own words, which clients read as busy), a
request's queue timeout, and a cancelled request leaves at once. Triton unloads the model only once the
line has answered every request it holds (the launcher unloads it first at a stop, for that); should the
line be closed with requests waiting, they are sent back unstarted, as retryable.

The estimate plays the line forward at the pace of the running request (seconds per denoising step, scaled
by frames x height x width), or of the last one when the running one has not done two steps; the time
outside the steps (encoders, decode) is learnt from the last finished request. Without any pace yet: none.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from openspeedy.contracts import NO_ESTIMATE_MS

log = logging.getLogger("openspeedy.line")

# How often the waiting requests are checked for a cancel or an expired queue timeout (well under a step),
# and how often each is told its estimate again while its place stays the same.
WATCH_S = 0.1
REFRESH_S = 2.0
# Triton's own queue-full message, so that every client that knows Triton's refusal knows this one.
FULL = "Exceeds maximum queue size"
STOPPING = "Exceeds maximum queue size: the server is stopping, this request was not started"
TIMED_OUT = "Request timeout expired"
# Logged once the line is done, at the model's unload: the launcher watches for it at a stop.
CLOSED = "line closed"


class Waiter(Protocol):
    """One request in the line, as the model sees it: the line calls these, never Triton directly."""

    steps: int  # denoising steps it will take
    volume: int  # frames x height x width: what a step's work grows with

    def cancelled(self) -> bool: ...

    def tell(self, ahead: int, starts_in_ms: int) -> None:
        """Sends the request its place: ``ahead`` requests before it (the running one included)."""

    def refuse(self, message: str, code: str) -> None:
        """Ends the request unstarted with ``message`` and the Triton error ``code`` ("UNAVAILABLE": busy,
        stopping or timed out, as Triton's own queue says it; "CANCELLED")."""

    def run(self, on_step: Callable[[int, int], None]) -> None:
        """Runs and answers the request, calling ``on_step(done, total)`` after each step."""


@dataclass(eq=False)
class _Place:
    waiter: Waiter
    arrived: float
    deadline: float | None  # monotonic; past it, unstarted, the request leaves (its queue timeout)
    told: int | None = None  # the ``ahead`` last sent
    told_at: float = 0.0


@dataclass
class _Pace:
    """The running request's progress, and what finished ones taught."""

    per_step_volume: float | None = None  # seconds per step per frame-pixel
    overhead_per_volume: float = 0.0  # seconds outside the steps per frame-pixel
    running: Waiter | None = None
    started: float = 0.0
    first_step: tuple[int, float] | None = None
    last_step: tuple[int, float] | None = None

    def start(self, waiter: Waiter, now: float) -> None:
        self.running, self.started, self.first_step, self.last_step = waiter, now, None, None

    def step(self, done: int, now: float) -> None:
        if self.first_step is None:
            self.first_step = (done, now)
        else:
            first_done, first_at = self.first_step
            self.per_step_volume = (now - first_at) / max(done - first_done, 1) / self.running.volume
        self.last_step = (done, now)

    def finish(self, now: float) -> None:
        waiter = self.running
        if waiter is not None and self.per_step_volume is not None and self.last_step is not None:
            stepping = waiter.steps * self.per_step_volume * waiter.volume
            self.overhead_per_volume = max(0.0, (now - self.started) - stepping) / waiter.volume
        self.running = None

    def duration(self, waiter: Waiter) -> float:
        return waiter.volume * (waiter.steps * self.per_step_volume + self.overhead_per_volume)

    def running_left(self, now: float) -> float:
        """Seconds the running request still needs (its decode included)."""
        waiter = self.running
        if waiter is None:
            return 0.0
        done, since = self.last_step if self.last_step else (0, self.started)
        left = (waiter.steps - done) * self.per_step_volume * waiter.volume + self.overhead_per_volume * waiter.volume
        return max(0.0, left - (now - since))


class Line:
    """Requests in arrival order, ``capacity`` of them waiting at most, run one at a time."""

    def __init__(self, name: str, capacity: int, on_length: Callable[[int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        """``on_length(waiting)`` hears of each change of the number waiting (a gauge's ``set``),
        ``on_wait(seconds)`` of how long each request waited before it started (a histogram's ``observe``)."""
        self.name, self.capacity, self._clock = name, capacity, clock
        self._on_length, self._length, self._on_wait = on_length, 0, on_wait
        self._waiting: collections.deque[_Place] = collections.deque()
        self._pace = _Pace()
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=f"{name}-line", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-line-watch", daemon=True)
        self._worker.start()
        self._watcher.start()

    def __len__(self) -> int:
        """Requests waiting (not the running one)."""
        with self._changed:
            return len(self._waiting)

    def add(self, waiter: Waiter, timeout_s: float | None = None) -> None:
        """Puts a request at the end of the line and tells it its place; refuses it when the line is full."""
        with self._changed:
            if self._closed:
                return _refuse(waiter, STOPPING, code="UNAVAILABLE")
            if len(self._waiting) >= self.capacity:
                return _refuse(waiter, FULL, code="UNAVAILABLE")
            now = self._clock()
            place = _Place(waiter, now, now + timeout_s if timeout_s else None)
            if self._pace.running is None and not self._waiting:
                place.told, place.told_at = 0, now  # it starts at once: nothing to tell
            self._waiting.append(place)
            self._tell(now)
            self._changed.notify_all()

    def close(self, timeout_s: float | None = None) -> bool:
        """Sends the waiting requests back unstarted and waits for the running one; False if it still runs."""
        with self._changed:
            self._closed = True
            sent_back = list(self._waiting)
            self._waiting.clear()
            self._report_length()
            running = self._pace.running is not None
            self._changed.notify_all()
        if running or sent_back:
            log.info("%s: closing: %s, %d waiting sent back unstarted", self.name,
                     "the running request finishes" if running else "none running", len(sent_back))
        for place in sent_back:
            _refuse(place.waiter, STOPPING, code="UNAVAILABLE")
        self._worker.join(timeout_s)
        self._watcher.join(timeout_s)
        log.info("%s: %s", self.name, CLOSED)
        return not self._worker.is_alive()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                place = self._waiting.popleft()
                waiter, now = place.waiter, self._clock()
                self._pace.start(waiter, now)
                self._tell(now)
                if self._on_wait is not None:
                    self._on_wait(now - place.arrived)

            def on_step(done: int, total: int) -> None:
                with self._changed:
                    self._pace.step(done, self._clock())

            try:
                waiter.run(on_step)
            except Exception:  # noqa: BLE001 - run answers its request; the line must outlive any failure
                log.exception("%s: a request failed outside its own error handling", self.name)
            with self._changed:
                self._pace.finish(self._clock())  # the next one is told as it starts, the rest move up then

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                self._changed.wait(WATCH_S)
                now = self._clock()
                for place in list(self._waiting):
                    if place.waiter.cancelled():
                        self._waiting.remove(place)
                        _refuse(place.waiter, "request cancelled before it started", code="CANCELLED")
                    elif place.deadline is not None and now >= place.deadline:
                        self._waiting.remove(place)
                        _refuse(place.waiter, TIMED_OUT, code="UNAVAILABLE")
                self._tell(now)

    def _tell(self, now: float) -> None:
        """Tells each waiting request its place when it changed or REFRESH_S after the last time (lock held)."""
        pace = self._pace
        known = pace.per_step_volume is not None
        starts_in = pace.running_left(now) if known else 0.0
        ahead = 1 if pace.running is not None else 0
        for place in list(self._waiting):
            if place.told != ahead or now - place.told_at >= REFRESH_S:
                place.told, place.told_at = ahead, now
                try:
                    place.waiter.tell(ahead, round(starts_in * 1000) if known else NO_ESTIMATE_MS)
                except Exception:  # noqa: BLE001 - its stream is gone: it leaves the line
                    self._waiting.remove(place)
                    log.info("%s: a waiting request could not be told its place; it left the line", self.name)
                    _refuse(place.waiter, "request cancelled before it started: its client is gone", "CANCELLED")
                    continue
            if known:
                starts_in += pace.duration(place.waiter)
            ahead += 1
        self._report_length()

    def _report_length(self) -> None:
        if self._on_length is not None and len(self._waiting) != self._length:
            self._length = len(self._waiting)
            self._on_length(self._length)


def _refuse(waiter: Waiter, message: str, code: str) -> None:
    try:
        waiter.refuse(message, code)
    except Exception:  # noqa: BLE001 - a client already gone has nothing left to receive
        log.info("could not send a refusal (%s): its client is gone", message)
