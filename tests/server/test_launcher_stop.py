"""The launcher's stop against a stand-in tritonserver (a script under a fake Triton root): quick, no Triton."""

from __future__ import annotations

import threading
import time

import pytest

from openspeedy import server as launcher
from openspeedy.server import ServerOptions, StopRequested, TritonServer

# Never ready; on SIGTERM says what Triton 2.51 says once every request has finished, then hangs as its
# unloading does when a model never unloads.
HANGS_UNLOADING = """#!/usr/bin/env python3
import signal, sys, time

if "--help" in sys.argv:  # the launcher asks which flags this build has
    sys.exit(0)

def stop(*_):
    print('I0101 server.cc:336] "All models are stopped, unloading models"', flush=True)
    while True:
        time.sleep(1)

signal.signal(signal.SIGTERM, stop)
open(__file__ + ".started", "w").close()
while True:
    time.sleep(1)
"""


def test_a_stop_asked_for_while_starting_then_repeated_reports_the_first_stops_code(tmp_path, monkeypatch):
    """A SIGTERM while tritonserver is still starting ends it inside start(); serve_forever's own stop then
    asks again. The second stop must say what the first did (a clean stop), not the SIGKILL's -9 that the
    ended process shows."""
    tritonserver = tmp_path / "triton" / "bin" / "tritonserver"
    tritonserver.parent.mkdir(parents=True)
    tritonserver.write_text(HANGS_UNLOADING)
    tritonserver.chmod(0o755)
    monkeypatch.setattr(launcher, "UNLOAD_GRACE_S", 0.5)
    server = TritonServer(ServerOptions(tmp_path, triton_root=tmp_path / "triton", http_port=0, grpc_port=0,
                                        metrics_port=0, restart_dead_stubs=False, http_guard=False))

    def stop_once_started() -> None:  # not before: a SIGTERM ahead of its handler would simply end it
        deadline = time.monotonic() + 60
        while not tritonserver.with_suffix(".started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.request_stop()

    threading.Thread(target=stop_once_started, daemon=True).start()
    with pytest.raises(StopRequested):
        server.start(timeout=60)
    assert server.process.returncode == -9  # ended for hanging in its unloading
    assert server.stop() == 0
    assert server.stop() == 0
