"""The stream model's line without Triton: order, places told, refusals, cancels, timeouts, the stop."""

from __future__ import annotations

import threading
import time

import pytest

from openspeedy.serving import line as line_module
from openspeedy.serving.line import FULL, STOPPING, TIMED_OUT, Line


class Waiter:
    """A request: ``run`` does ``steps`` steps of ``step_s`` each, or waits for ``release`` between steps."""

    def __init__(self, name: str, steps: int = 2, volume: int = 1, step_s: float = 0.0, gate: bool = False):
        self.name, self.steps, self.volume, self.step_s = name, steps, volume, step_s
        self.told: list[tuple[int, int]] = []
        self.refused: tuple[str, str] | None = None
        self.started = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        self.gate = gate
        self.cancel = False

    def cancelled(self) -> bool:
        return self.cancel

    def tell(self, ahead: int, starts_in_ms: int) -> None:
        self.told.append((ahead, starts_in_ms))

    def refuse(self, message: str, code: str) -> None:
        self.refused = (message, code)
        self.finished.set()

    def run(self, on_step) -> None:
        self.started.set()
        for done in range(1, self.steps + 1):
            if self.gate:
                assert self.release.wait(10)
                self.release.clear()
            time.sleep(self.step_s)
            on_step(done, self.steps)
        self.finished.set()


def finish(waiter: Waiter) -> None:
    """Lets a gated request take its remaining steps, one at a time."""
    while not waiter.finished.is_set():
        waiter.release.set()
        wait_for(lambda: not waiter.release.is_set() or waiter.finished.is_set(), f"a step of {waiter.name}")


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def line():
    made = Line("test", capacity=3)
    yield made
    made.close(5)


def test_requests_run_in_arrival_order_each_told_its_place(line):
    first, second, third = Waiter("first", gate=True), Waiter("second"), Waiter("third")
    line.add(first)
    assert first.started.wait(5)
    line.add(second)
    line.add(third)
    assert second.told[0][0] == 1 and third.told[0][0] == 2
    finish(first)
    for waiter in (first, second, third):
        assert waiter.finished.wait(5), waiter.name
    # The third moved up when the first finished: told 1 ahead, then ran.
    assert [ahead for ahead, _ in third.told][:2] == [2, 1]
    assert first.told == []  # it started at once: never waited


def test_the_estimate_follows_the_running_requests_pace():
    line = Line("test", capacity=3)
    try:
        running = Waiter("running", steps=4, volume=1, gate=True)
        line.add(running)
        assert running.started.wait(5)
        before = Waiter("before", steps=10, volume=2)
        line.add(before)
        assert before.told[-1] == (1, -1)  # no step done anywhere yet: no estimate
        for _ in range(2):
            running.release.set()
            wait_for(lambda: not running.release.is_set(), "a step")
            time.sleep(0.1)  # two steps seen, paced by their time apart
        late = Waiter("late", steps=10, volume=2)
        line.add(late)
        ahead, starts_in_ms = late.told[-1]
        assert ahead == 2
        # It waits for the running one's two steps left and the ten steps of twice the volume before it.
        assert starts_in_ms > 0 and starts_in_ms >= before.told[-1][1]
        finish(running)
    finally:
        line.close(5)


def test_a_full_line_refuses_with_tritons_own_words(line):
    running = Waiter("running", gate=True)
    line.add(running)
    assert running.started.wait(5)
    waiting = [Waiter(f"w{n}") for n in range(3)]
    for waiter in waiting:
        line.add(waiter)
    extra = Waiter("extra")
    line.add(extra)
    assert extra.refused == (FULL, "UNAVAILABLE") and not extra.told
    assert len(line) == 3
    finish(running)


def test_a_cancelled_or_timed_out_request_leaves_the_line_and_the_rest_move_up(line):
    running = Waiter("running", gate=True)
    line.add(running)
    assert running.started.wait(5)
    cancelled, timed_out, last = Waiter("cancelled"), Waiter("timed out"), Waiter("last")
    line.add(cancelled)
    line.add(timed_out, timeout_s=0.2)
    line.add(last)
    assert last.told[-1][0] == 3
    cancelled.cancel = True
    wait_for(lambda: cancelled.refused and timed_out.refused, "both to leave")
    assert cancelled.refused[1] == "CANCELLED"
    assert timed_out.refused == (TIMED_OUT, "UNAVAILABLE")
    wait_for(lambda: last.told[-1][0] == 1, "the last to move up")
    assert not cancelled.started.is_set() and not timed_out.started.is_set()
    finish(running)
    assert last.finished.wait(5)


def test_a_request_whose_stream_is_gone_leaves_the_line(line):
    running = Waiter("running", gate=True)
    line.add(running)
    assert running.started.wait(5)
    gone = Waiter("gone")
    gone.tell = lambda ahead, starts_in_ms: (_ for _ in ()).throw(RuntimeError("stream closed"))
    line.add(gone)
    assert len(line) == 0
    assert gone.refused[1] == "CANCELLED"  # its final answer, should anyone still listen
    finish(running)
    assert not gone.started.is_set()


def test_a_stop_finishes_the_running_request_and_sends_the_waiting_back(caplog):
    line = Line("test", capacity=3)
    running, waiting = Waiter("running", steps=3, step_s=0.1), Waiter("waiting")
    line.add(running)
    assert running.started.wait(5)
    line.add(waiting)
    with caplog.at_level("INFO", logger=line_module.log.name):
        assert line.close(10)
    assert running.finished.is_set() and running.refused is None
    assert waiting.refused == (STOPPING, "UNAVAILABLE") and not waiting.started.is_set()
    assert FULL in STOPPING  # clients that know Triton's refusal retry it, elsewhere
    assert "closing: the running request finishes, 1 waiting sent back unstarted" in caplog.messages[0]
    assert line_module.CLOSED in caplog.messages[-1]
    late = Waiter("late")
    line.add(late)
    assert late.refused == (STOPPING, "UNAVAILABLE")


def test_a_run_that_raises_does_not_stop_the_line(line):
    broken, after = Waiter("broken"), Waiter("after")
    broken.run = lambda on_step: (_ for _ in ()).throw(RuntimeError("boom"))
    line.add(broken)
    line.add(after)
    assert after.finished.wait(5)
