"""Reloads a model whose python backend stub process died.

Triton 2.51's python backend neither restarts a dead stub nor reports its model unready: every later
request to the model fails with "Stub process ... is not healthy" while /v2/health/ready answers 200
(tests/server/test_faults.py shows it). What recovers the model is loading it again under explicit model
control, with a config that differs from the loaded one (Triton skips a load of unchanged files and
updates an unchanged config in place, keeping the dead stub). Triton has no option for this, so
OpenSpeedy's launcher watches the stubs itself.

Nor does Triton remove a dead stub's shared-memory region (/dev/shm/triton_python_backend_shm_region_*,
named on the stub's command line): the file outlived the server, and a pod's /dev/shm is memory that
outlives its containers' restarts. The watchdog removes the name once the stub is dead; tritonserver's
own mapping of it stays valid and the memory is freed when the server exits.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from openspeedy.model_parameters import RELOAD_PARAMETER

SHARED_MEMORY = Path("/dev/shm")  # where POSIX shm_open names live on Linux
REGION_PREFIX = "triton_python_backend_shm_region_"

# Flags the watchdog needs: reloads go through the repository API, which only explicit control allows.
EXPLICIT_MODEL_CONTROL = ("--model-control-mode=explicit", "--load-model=*")


def stub_processes(server_pid: int, repository: Path) -> dict[str, list[psutil.Process]]:
    """The live stub processes of each python model of the server, by model name."""
    stubs: dict[str, list[psutil.Process]] = {}
    for child in psutil.Process(server_pid).children(recursive=True):
        model = _stub_model(child, Path(repository).resolve())
        if model is not None:
            stubs.setdefault(model, []).append(child)
    return stubs


def _stub_command(process: psutil.Process) -> list[str]:
    """A live process's command line; empty for a zombie (its command line is) or a process gone."""
    try:
        return [] if process.status() == psutil.STATUS_ZOMBIE else process.cmdline()
    except psutil.Error:
        return []


def _stub_model(process: psutil.Process, repository: Path, command: list[str] | None = None) -> str | None:
    """The model of a live stub process: its command line names ``<repository>/<model>/<version>/model.py``."""
    for argument in _stub_command(process) if command is None else command:
        if argument.startswith(f"{repository}/") and argument.endswith("/model.py"):
            return Path(argument).relative_to(repository).parts[0]
    return None


class StubWatchdog:
    """A thread that reloads a model one of whose stubs died, through the server's HTTP endpoint.

    A dead stub is one that stays a zombie child of tritonserver: Triton reaps the stubs it stops itself
    (an unload, a reload) at once, and never reaps one that died under it. Counting live stubs instead
    is fooled by loading and unloading, during which stubs come and go (a reload starts the new
    instance's stub before the old one ends, plus a short-lived one for the model itself), and then
    every reload looks like the next death."""

    def __init__(self, server_pid: int, repository: Path, http_url: str, interval_s: float = 1.0,
                 headers: dict[str, str] | None = None, max_failed_reloads: int = 3):
        self.server_pid, self.repository, self.http_url = server_pid, Path(repository).resolve(), http_url
        self.headers = dict(headers or {})  # the admin key: the repository API is restricted to its holders
        self.interval_s = interval_s
        self.reloads: list[tuple[str, float]] = []  # (model, when it finished): what it did, for logs and tests
        self.attempts = 0  # reloads started, finished or not
        # Reloads of a model that failed in a row; at max_failed_reloads the watchdog gives up and says why in
        # ``gave_up``: the launcher then exits, so that the pod is restarted instead of failing every request.
        self.max_failed_reloads = max_failed_reloads
        self.failed_reloads: dict[str, int] = {}
        self.gave_up: str = ""
        self._models: dict[int, str] = {}  # stub pid -> model, learnt while the stub was alive
        self._regions: dict[int, str] = {}  # stub pid -> its shared-memory region's name, likewise
        self._zombies: set[int] = set()  # zombie stubs seen in the last round
        self._handled: set[int] = set()  # dead stubs whose model was reloaded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openspeedy-stub-watchdog", daemon=True)

    def start(self) -> "StubWatchdog":
        self._observe()  # learn every stub now: one that dies before the first round is known too
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _observe(self) -> set[int]:
        """Learns the stubs alive now; returns the known stubs that are zombies now."""
        children = psutil.Process(self.server_pid).children(recursive=True)
        # Forget processes that are gone (their pids may be reused), then learn the new stubs.
        alive = {child.pid for child in children}
        self._models = {pid: model for pid, model in self._models.items() if pid in alive}
        self._regions = {pid: region for pid, region in self._regions.items() if pid in alive}
        self._handled &= alive
        for child in children:
            command = _stub_command(child)
            model = _stub_model(child, self.repository, command)
            if model is not None:
                self._models[child.pid] = model
                region = stub_region(command)
                if region:
                    self._regions[child.pid] = region
        return {child.pid for child in children if child.pid in self._models and _is_zombie(child)}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                zombies = self._observe()
            except psutil.NoSuchProcess:
                return  # the server is gone: nothing left to watch
            # A zombie in two rounds in a row: not a stub that Triton is about to reap.
            dead = (zombies & self._zombies) - self._handled
            self._zombies = zombies
            for pid in dead:
                self._remove_region(pid)
            for model in sorted({self._models[pid] for pid in dead}):
                if self._reload(model):
                    self._handled |= {pid for pid in dead if self._models[pid] == model}
                    self.failed_reloads.pop(model, None)
                    continue
                self.failed_reloads[model] = self.failed_reloads.get(model, 0) + 1
                if self.failed_reloads[model] >= self.max_failed_reloads:
                    self.gave_up = (f"model '{model}' lost a python backend stub and {self.failed_reloads[model]} "
                                    "reloads in a row failed")
                    return

    def _remove_region(self, pid: int) -> None:
        remove_region(self._regions.pop(pid, ""))

    def known_regions(self) -> set[str]:
        """The shared-memory regions of the stubs seen alive and not yet removed (the launcher removes them
        after a crash or a stop that had to kill)."""
        return set(self._regions.values())

    def _reload(self, model: str) -> bool:
        print(f"openspeedy watchdog: a stub of model '{model}' died; reloading the model", flush=True)
        self.attempts += 1
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/config", timeout=30) as response:
                config = json.loads(response.read())
            config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time_ns())}
            body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
            load = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/load", data=body,
                                          method="POST", headers={"Content-Type": "application/json", **self.headers})
            with urllib.request.urlopen(load, timeout=600):
                pass  # returns once the new instances are loaded (and warmed up)
            self.reloads.append((model, time.time()))
            return True
        except OSError as error:  # the server stopping, or a load that failed
            print(f"openspeedy watchdog: reloading '{model}' failed: {error}", flush=True)
            return False


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stub_region(command: list[str]) -> str:
    """The shared-memory region named on a python backend stub's command line; empty for another process."""
    return next((arg for arg in command if arg.startswith(REGION_PREFIX)), "")


def remove_region(region: str) -> bool:
    """Removes a stub's region from /dev/shm; True if it was there. Only a bare name with the python backend's
    prefix is touched."""
    if not region.startswith(REGION_PREFIX) or Path(region).name != region:
        return False
    try:
        (SHARED_MEMORY / region).unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as error:  # not ours to remove: serving matters more
        print(f"openspeedy: could not remove /dev/shm/{region}: {error}", flush=True)
        return False
