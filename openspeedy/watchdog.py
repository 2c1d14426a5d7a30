"""Reloads a model whose python backend stub process died.

Triton 2.51's python backend neither restarts a dead stub nor reports its model unready: every later
request to the model fails with "Stub process ... is not healthy" while /v2/health/ready answers 200
(tests/test_faults.py shows it). What recovers the model is loading it again under explicit model
control, with a config that differs from the loaded one (Triton skips a load of unchanged files and
updates an unchanged config in place, keeping the dead stub). Triton has no option for this, so
OpenSpeedy's launcher watches the stubs itself.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import psutil

# Flags the watchdog needs: reloads go through the repository API, which only explicit control allows.
EXPLICIT_MODEL_CONTROL = ("--model-control-mode=explicit", "--load-model=*")
RELOAD_PARAMETER = "openspeedy_reload"  # changed on each reload; the models ignore it


def stub_processes(server_pid: int, repository: Path) -> dict[str, list[psutil.Process]]:
    """The live stub processes of each python model of the server, by model name. A stub's command line
    names its model's ``<repository>/<model>/<version>/model.py``."""
    repository = str(Path(repository).resolve())
    stubs: dict[str, list[psutil.Process]] = {}
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = child.cmdline()
        except psutil.Error:
            continue
        for argument in command:
            if argument.startswith(repository + "/") and argument.endswith("/model.py"):
                model = Path(argument).relative_to(repository).parts[0]
                stubs.setdefault(model, []).append(child)
    return stubs


class StubWatchdog:
    """A thread that reloads a model when one of its stubs is gone, through the server's HTTP endpoint."""

    def __init__(self, server_pid: int, repository: Path, http_url: str, interval_s: float = 1.0):
        self.server_pid, self.repository, self.http_url = server_pid, Path(repository), http_url
        self.interval_s = interval_s
        self.reloads: list[tuple[str, float]] = []  # (model, when): what it did, for logs and tests
        self._expected: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openspeedy-stub-watchdog", daemon=True)

    def start(self) -> "StubWatchdog":
        self._expected = self._current()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _current(self) -> dict[str, set[int]]:
        stubs = stub_processes(self.server_pid, self.repository)
        return {model: {process.pid for process in processes} for model, processes in stubs.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                current = self._current()
            except psutil.NoSuchProcess:
                return  # the server is gone: nothing left to watch
            for model, pids in self._expected.items():
                if pids <= current.get(model, set()):
                    continue
                if self._reload(model):
                    current = self._current()
                else:
                    current[model] = pids  # still missing: tried again next round
            self._expected = current

    def _reload(self, model: str) -> bool:
        print(f"openspeedy watchdog: a stub of model '{model}' died; reloading the model", flush=True)
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/config", timeout=30) as response:
                config = json.loads(response.read())
            config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time_ns())}
            body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
            load = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/load", data=body,
                                          method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(load, timeout=600):
                pass  # returns once the new instances are loaded (and warmed up)
            self.reloads.append((model, time.time()))
            return True
        except OSError as error:  # the server stopping, or a load that failed
            print(f"openspeedy watchdog: reloading '{model}' failed: {error}", flush=True)
            return False
