"""What the client, command-line and browser tests read from a running server: its metrics and log."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Callable


def metric(server, name: str, model: str) -> float | None:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    match = re.search(rf'^{name}\{{model="{model}"(?:,version="1")?\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def in_flight(server, model: str = "i2vgen_xl_stream") -> float:
    return metric(server, "openspeedy_requests_in_flight", model) or 0.0


def pending(server, model: str = "i2vgen_xl_stream") -> float:
    """Requests waiting to start on ``model``: in Triton's queue, and in the stream model's own line."""
    return ((metric(server, "nv_inference_pending_request_count", model) or 0.0)
            + (metric(server, "openspeedy_requests_waiting", model) or 0.0))


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class LogTail:
    """The part of a server log written after this object was made."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return handle.read().decode(errors="replace")

    def cancelled_after_step(self, model: str = "i2vgen_xl_stream") -> int | None:
        match = re.search(rf"{model}: request cancelled after step (\d+)/\d+", self.text())
        return int(match.group(1)) if match else None


def default_sigint() -> None:
    """For a child process: Ctrl-C's default behaviour even where the test runner was started with SIGINT
    ignored (a background job of a non-interactive shell), so that the child gets a KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
