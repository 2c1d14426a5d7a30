"""Faults on a server of this module's own (never the session's): a Python backend stub killed
mid-request, the server restarted mid-load, and a model running out of device memory (simulated).

What tritonserver 2.51's python backend does when a model's stub process dies (measured here with the
nvidia-pytriton 0.7.0 build, and asserted below so that a Triton upgrade that changes it is noticed):

- the request in flight in that model gets an error at once ("Stub process 'unet_0_0' is not healthy."),
  which the entry model returns as "model 'unet' failed: ..."; nothing hangs;
- the stub is NOT restarted: it stays a zombie child of tritonserver, and every later request that needs
  the model fails with the same error, however long one waits;
- the model is NOT reported unready: /v2/health/ready and /v2/models/unet/ready both keep answering 200
  (2.51's python backend does not check its stub when asked for readiness), /v2/health/live too;
- what recovers it is loading the model again (``--model-control-mode=explicit``, then
  ``POST /v2/repository/models/unet/load``): a new stub starts and requests succeed again. The load must
  really reload: Triton skips the load of a model whose files did not change, and given the same config
  in the request it only updates the model in place (no new stub); a config with one parameter changed
  (the watchdog's ``openspeedy_reload``) reloads it. The dead instance is never unloaded, though: a graceful stop
  afterwards waits the whole --exit-timeout-secs for it ("Found 1 live models") and tritonserver exits
  with 1 ("Exit timeout expired"), and so does a stop without the reload. Without explicit model control
  only a server restart recovers. The killed stub's /dev/shm region is never removed (the watchdog does
  it; without it, the test).

OpenSpeedy's launcher (`openspeedy serve`, openspeedy.server.TritonServer) therefore watches the stubs
itself and does that reload (openspeedy/watchdog.py; asserted below for the unet and for the entry model):
the request in flight fails, the model is back within seconds, the server stays ready. The container runs
the launcher too (docker/entrypoint.sh). Where tritonserver runs without it, Triton's readiness probe does
not notice a dead stub: probe with an inference (or watch nv_inference_request_failure) and restart the pod.

Restart mid-load (asserted: every request sent before the SIGTERM ends, within a bound, with its video of
the right shape or with an error carrying a message; a new server on the same ports serves again). Seen on
2.51, not asserted because it depends on timing:

- on SIGTERM tritonserver first waits for its open HTTP connections ("Found N HTTP service connections",
  up to --exit-timeout-secs), then for in-flight inferences with what is left of that timeout, unloading
  every model that has none in flight. A BLS pipeline is not one inference from the composing models'
  point of view: between two steps the unet is idle and may be unloaded, and the entry model's next
  sub-request fails ("model 'unet' failed: Model unet - Error when running inference: Server not
  ready"). The gRPC service does not hold the drain the way HTTP connections do: in one run the three
  HTTP requests got their videos while the three gRPC ones queued behind them got that error;
- where the drain finished in time, all six requests (queued ones included) got their videos and the
  server exited 0;
- where it did not (a loaded machine), Triton "exits immediately" when --exit-timeout-secs runs out and
  crashed on the way out (SIGSEGV in libtritonserver/libtriton_python, exit code -11; once SIGABRT,
  "std::system_error: Invalid argument", -6); the clients got "Stream removed (GOAWAY)" over gRPC and
  "Connection refused" over HTTP. In one such run the pipeline in flight made no progress at all during
  the last 22 s of the drain (build/test-logs/faults-restart.log): not understood yet.

A rolling update should stop routing traffic to a pod and let it go idle before sending SIGTERM, with an
exit timeout longer than the longest video.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from openspeedy.client import Client, GenerationError
from openspeedy.model_parameters import RELOAD_PARAMETER
from openspeedy.server import ServerOptions, TritonServer
from openspeedy.watchdog import stub_processes
from tests.helpers import encode, free_port, random_image

pytestmark = pytest.mark.server

IMAGE = encode(random_image(120, 80, seed=31))
QUICK = dict(num_frames=2, height=32, width=32, num_inference_steps=2, seed=5)
LONG = dict(num_frames=8, height=64, width=64, num_inference_steps=100, seed=6)  # many unet calls to land in
REQUEST_TIMEOUT_S = 180.0
LOGS = Path("build/test-logs")


def _status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return type(error).__name__


def _stats(server: TritonServer, model: str) -> dict:
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, connection_timeout=10, network_timeout=30)
    try:
        return client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()


def _stubs(server: TritonServer, model: str, repository: Path) -> list[psutil.Process]:
    """The live stub processes of ``model`` (what the watchdog watches)."""
    return stub_processes(server.process.pid, repository).get(model, [])


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _request_thread(server: TritonServer, protocol: str, options: dict, outcomes: dict, key) -> threading.Thread:
    url = server.grpc_url if protocol == "grpc" else server.http_url

    def run():
        started = time.monotonic()
        try:
            with Client(url, protocol, timeout_s=REQUEST_TIMEOUT_S) as client:
                frames = client.generate(IMAGE, "a storm over the sea", **options).frames
            outcomes[key] = ("ok", frames, time.monotonic() - started)
        except Exception as error:  # noqa: BLE001 - any error is an outcome, as long as there is one
            outcomes[key] = ("error", error, time.monotonic() - started)

    thread = threading.Thread(target=run, name=f"request-{key}", daemon=True)
    thread.start()
    return thread


def _stub_processes(server: TritonServer) -> dict[int, tuple[psutil.Process, str | None]]:
    """Every stub of the server now, with the shared-memory region it was given."""
    stubs = {}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        region = next((arg for arg in command if arg.startswith("triton_python_backend_shm_region_")), None)
        stubs[child.pid] = (child, region)
    return stubs


def _clean_up_after(stubs: dict[int, tuple[psutil.Process, str | None]]) -> list[str]:
    """After the server exited: kills its stubs that outlived it and removes the /dev/shm regions it left.

    Both happen on 2.51 (not asserted, the timing decides): a killed stub's region stays in /dev/shm, and
    after a crash on a forced exit the entry model's stub, blocked in a BLS call, is orphaned for good.
    """
    left = []
    for pid, (process, region) in stubs.items():
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"stub {pid}")
                process.kill()
        except psutil.Error:
            pass
        if region and (Path("/dev/shm") / region).exists():
            left.append(f"/dev/shm/{region}")
            (Path("/dev/shm") / region).unlink(missing_ok=True)
    return left


def _options(repository: Path, *extra: str, watchdog: bool = True) -> ServerOptions:
    return ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         extra_args=list(extra), restart_dead_stubs=watchdog)


def test_restart_mid_load_loses_no_accepted_request(tiny_repository):
    options = _options(tiny_repository)
    servers = [TritonServer(options, log_path=LOGS / "faults-restart.log")]
    servers[0].start()
    stubs = _stub_processes(servers[0])
    try:
        server = servers[0]
        executions_before = _stats(server, "unet")["execution_count"]
        requests = [("grpc" if i % 2 == 0 else "http", dict(LONG, num_inference_steps=30 + i, seed=i))
                    for i in range(6)]
        outcomes: dict = {}
        threads = [_request_thread(server, protocol, opts, outcomes, i) for i, (protocol, opts) in enumerate(requests)]
        # the work under way; all requests went out together at the start, so the server holds them all
        _wait_until(lambda: _stats(server, "unet")["execution_count"] >= executions_before + 2, 120,
                    "the load to start")
        time.sleep(0.5)
        queued = _pending(server)
        in_flight = set(range(len(requests))) - set(outcomes)
        assert in_flight, "all requests finished before the restart: nothing was tested"

        stopper = threading.Thread(target=server.stop, name="sigterm", daemon=True)
        stopper.start()  # SIGTERM; stop() waits for the exit (SIGKILL after 60 s)
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 90)
        stopper.join(120)
        assert not stopper.is_alive(), "the server did not exit"
        hung = [thread.name for thread in threads if thread.is_alive()]
        assert not hung, f"requests without an answer (lost or hung): {hung}"
        assert set(outcomes) == set(range(len(requests)))
        for index, (kind, value, _) in outcomes.items():
            _, opts = requests[index]
            if kind == "ok":
                assert value is not None and value.shape == (opts["num_frames"], opts["height"], opts["width"], 3)
            else:
                assert str(value), f"request {index} failed without a message: {value!r}"
        summary = {index: (kind, round(seconds, 1), "" if kind == "ok" else str(value)[:100])
                   for index, (kind, value, seconds) in sorted(outcomes.items())}
        print(f"in flight at SIGTERM {sorted(in_flight)} ({queued} queued); server exit code "
              f"{server.process.returncode}; outcomes {summary}")

        print(f"left behind by the stopped server: {_clean_up_after(stubs) or 'nothing'}")

        # the same ports again
        servers.append(TritonServer(options, log_path=LOGS / "faults-restart.log"))
        servers[-1].start()
        stubs.update(_stub_processes(servers[-1]))
        for protocol in ("grpc", "http"):
            url = servers[-1].grpc_url if protocol == "grpc" else servers[-1].http_url
            with Client(url, protocol, timeout_s=60) as client:
                assert client.generate(IMAGE, "again", **QUICK).frames.shape == (2, 32, 32, 3)
    finally:
        for server in servers:
            server.stop()
        _clean_up_after(stubs)


def _kill_mid_request(server: TritonServer, victim: psutil.Process) -> dict:
    """Two long requests (gRPC and HTTP) under way, then ``victim`` killed: their outcomes by protocol."""
    executions_before = _stats(server, "unet")["execution_count"]
    outcomes: dict = {}
    threads = [_request_thread(server, protocol, LONG, outcomes, protocol) for protocol in ("grpc", "http")]
    # kill once the denoising loop is under way, with many unet calls still to come
    _wait_until(lambda: _stats(server, "unet")["execution_count"] >= executions_before + 2, 120,
                "the unet to start working")
    assert not outcomes, f"a long request finished before the kill: {outcomes}"
    victim.kill()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 30)
    assert not any(thread.is_alive() for thread in threads), "a request in flight hung after the stub died"
    return outcomes


@pytest.mark.parametrize("model", ["unet", "i2vgen_xl"])
def test_watchdog_reloads_a_model_whose_stub_died(tiny_repository, model):
    """What `openspeedy serve` does (openspeedy/watchdog.py): the request in flight fails, the model is
    loaded again within seconds, later requests succeed and the server stays ready throughout."""
    server = TritonServer(_options(tiny_repository, "--exit-timeout-secs=5"),
                          log_path=LOGS / f"faults-watchdog-{model}.log")
    server.start()
    stubs = _stub_processes(server)
    try:
        (victim,) = _stubs(server, model, tiny_repository)
        outcomes = _kill_mid_request(server, victim)
        for protocol in ("grpc", "http"):
            kind, value, _ = outcomes[protocol]
            assert kind == "error" and isinstance(value, GenerationError), f"{protocol}: {value!r}"
            assert str(value), f"{protocol}: an error without a message"
        _wait_until(lambda: [m for m, _ in server.watchdog.reloads] == [model], 60, f"the watchdog to reload {model}")
        (new_stub,) = _stubs(server, model, tiny_repository)
        assert new_stub.pid != victim.pid
        region = stubs[victim.pid][1]
        assert region and not (Path("/dev/shm") / region).exists(), "the dead stub's shared memory was left"
        stubs.update(_stub_processes(server))
        assert _status(f"http://{server.http_url}/v2/health/ready") == 200
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with Client(url, protocol, timeout_s=60) as client:
                assert client.generate(IMAGE, "after", **QUICK).frames.shape == (2, 32, 32, 3)
        assert [m for m, _ in server.watchdog.reloads] == [model], "a model was reloaded that had not died"
        time.sleep(3)  # a reload that set off another (stubs come and go while Triton loads) would start by now
        assert server.watchdog.attempts == 1, "the reload set off another"
    finally:
        server.stop()
        _clean_up_after(stubs)


def test_killed_stub_fails_its_request_stays_ready_and_recovers_by_reload(tiny_repository):
    """Triton's own behaviour, without OpenSpeedy's watchdog (see the module's docstring)."""
    # the dead instance holds up the final stop for --exit-timeout-secs: keep that short here
    server = TritonServer(_options(tiny_repository, "--model-control-mode=explicit", "--load-model=*",
                                   "--exit-timeout-secs=5", watchdog=False), log_path=LOGS / "faults-stub-kill.log")
    server.start()
    stubs = _stub_processes(server)
    try:
        (unet,) = _stubs(server, "unet", tiny_repository)
        outcomes = _kill_mid_request(server, unet)
        for protocol in ("grpc", "http"):
            kind, value, _ = outcomes[protocol]
            assert kind == "error", f"{protocol}: the request in flight got a video although its unet died"
            assert isinstance(value, GenerationError), f"{protocol}: {value!r}"
            assert "unet" in str(value), f"{protocol}: {value}"

        # Triton 2.51: not restarted, still reported ready, every unet request fails
        with Client(server.grpc_url, "grpc", timeout_s=60) as client:
            for attempt in range(2):
                if attempt:
                    time.sleep(5)
                with pytest.raises(GenerationError, match=r"unet.*not healthy"):
                    client.generate(IMAGE, "after", **QUICK)
                assert _status(f"http://{server.http_url}/v2/health/live") == 200
                assert _status(f"http://{server.http_url}/v2/health/ready") == 200, (
                    "behaviour changed: the server now reports unready after a stub died; update this test's doc")
                assert _status(f"http://{server.http_url}/v2/models/unet/ready") == 200, (
                    "behaviour changed: the model is now reported unready after its stub died; update the doc")
                assert not _stubs(server, "unet", tiny_repository), "behaviour changed: the stub was restarted"
            assert unet.status() == psutil.STATUS_ZOMBIE

            # recovery: load the model again. With its files unchanged Triton skips the load, and the same
            # config given in the request only updates the model in place; a changed parameter reloads it.
            config = client._client.get_model_config("unet", as_json=True)["config"]
            config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time_ns())}
            client._client.load_model("unet", config=json.dumps(config), headers=server.grpc_admin_headers)
            _wait_until(lambda: len(_stubs(server, "unet", tiny_repository)) == 1, 120, "a new unet stub")
            (new_unet,) = _stubs(server, "unet", tiny_repository)
            assert new_unet.pid != unet.pid
            stubs.update(_stub_processes(server))
            assert client.generate(IMAGE, "after", **QUICK).frames.shape == (2, 32, 32, 3)
        with Client(server.http_url, "http", timeout_s=60) as client:
            assert client.generate(IMAGE, "after", **QUICK).frames.shape == (2, 32, 32, 3)
    finally:
        code = server.stop()
        left = _clean_up_after(stubs)
    # documented above, not asserted: 1 (the dead instance never unloads) where it was measured
    print(f"tritonserver exit code after the stub kill and reload: {code}; left behind: {left or 'nothing'}")
    assert code is not None


def _pending(server: TritonServer) -> int:
    """Requests the entry model holds (executing or queued), from the metrics endpoint."""
    try:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count") and 'model="i2vgen_xl"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


# A unet that runs out of device memory on 7-frame videos, as a full GPU would on a request too large
# for it (CPU machines cannot run out of device memory on demand).
_OOM_UNET = '''
import torch

from openspeedy.serving.component_model import component_model


class TritonPythonModel(component_model("unet")):
    def initialize(self, args):
        super().initialize(args)
        infer = self.component.infer

        def infer_or_run_out_of_memory(inputs):
            if inputs["SAMPLE"].shape[2] == 7:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
            return infer(inputs)

        self.component.infer = infer_or_run_out_of_memory
'''


def test_out_of_memory_in_a_model_is_that_requests_error(tiny_repository, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(tiny_repository, repository, copy_function=os.link)
    (repository / "unet" / "1" / "model.py").unlink()  # a hard link: never write through it
    (repository / "unet" / "1" / "model.py").write_text(_OOM_UNET)
    server = TritonServer(_options(repository), log_path=LOGS / "faults-oom.log")
    server.start()
    stubs = _stub_processes(server)
    try:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with Client(url, protocol, timeout_s=60) as client:
                with pytest.raises(GenerationError, match=r"unet.*OutOfMemoryError.*out of memory") as failed:
                    client.generate(IMAGE, "too big", **dict(QUICK, num_frames=7))
                assert not failed.value.retryable  # the same request would fail again
                assert client.generate(IMAGE, "fits", **QUICK).frames.shape == (2, 32, 32, 3)
        assert _status(f"http://{server.http_url}/v2/health/ready") == 200
        assert not server.watchdog.reloads, "a failed request must not take a model down"
    finally:
        server.stop()
        _clean_up_after(stubs)
