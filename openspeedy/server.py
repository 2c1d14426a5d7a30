"""Starting and stopping a real ``tritonserver`` on a model repository.

Two installations are known: the NGC container's ``/opt/tritonserver`` (production, TensorRT backend
included) and the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships (development and
CI machines, python backend only). The wheel's python backend needs its stub for this Python next to
it, so a backend directory is assembled once in a cache folder.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from openspeedy.contracts import I2VGEN_XL_STREAM
from openspeedy.serving.line import CLOSED
from openspeedy.watchdog import EXPLICIT_MODEL_CONTROL, StubWatchdog, remove_region, stub_region

CONTAINER_ROOT = Path("/opt/tritonserver")
# Tritonserver's fatal-signal handler (SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV); its SIGINT/SIGTERM handler
# prints the same words for 2 and 15 before its orderly stop.
FATAL_SIGNAL_LINE = re.compile(rb"^Signal \(([4678]|11)\) received\.")
# Logged once every request in flight has finished at a stop: from then on only the models' unloading is left.
UNLOADING_LINE = re.compile(rb'.*"All models are stopped, unloading models"')
# How long that unloading may take before the launcher ends the server: seconds on CPU and GPU alike.
UNLOAD_GRACE_S = 5.0
# Logged by the stream model's line at its unload, once it has answered every request it held.
LINE_CLOSED = re.compile(rb".*" + re.escape(f"{I2VGEN_XL_STREAM.name}: {CLOSED}".encode()))

# Triton's admin protocols, refused without the admin key (docs/security.md says why each one):
# model-repository (load/unload/index: one anonymous unload took the service down), shared-memory
# (registering a region maps any /dev/shm file of the pod, the python backend's own included), trace and
# logging (their settings name files the server writes). Left open: health, metadata, inference,
# model-config (clients read the entry model's defaults from it; it holds no credential) and statistics
# (the same counters that the open metrics port exports).
RESTRICTED_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")
# The HTTP header that carries the key; over gRPC, Triton expects it prefixed (GRPC_ADMIN_KEY_HEADER).
ADMIN_KEY_HEADER = "openspeedy-admin-key"
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
ADMIN_KEY_ENV = "OPENSPEEDY_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "OPENSPEEDY_ADMIN_KEY_FILE"


def admin_key_from_environment(environ: dict[str, str] | None = None) -> str:
    """The admin key of a Secret (mounted file or variable), else a new random one for this start.

    A fixed key is only needed where something besides the launcher must administer the server (an
    operator's kubectl exec); a key made per start is held by the launcher and its watchdog alone."""
    environ = os.environ if environ is None else environ
    if environ.get(ADMIN_KEY_FILE_ENV):
        key = Path(environ[ADMIN_KEY_FILE_ENV]).read_text().strip()
        source = f"the file {environ[ADMIN_KEY_FILE_ENV]} (${ADMIN_KEY_FILE_ENV})"
    elif environ.get(ADMIN_KEY_ENV):
        key, source = environ[ADMIN_KEY_ENV].strip(), f"${ADMIN_KEY_ENV}"
    else:
        return secrets.token_urlsafe(32)
    # Triton splits the flag's value at ',', ':' and '='; a short key can be guessed.
    if len(key) < 16 or not all(c.isalnum() or c in "-_." for c in key):
        raise ValueError(f"the admin key in {source} must be at least 16 characters of A-Z, a-z, 0-9, '-', '_', '.'")
    return key


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_directory: Path
    cache_directory: Path
    library_paths: tuple[Path, ...] = ()


def _runtime_cache() -> Path:
    root = os.environ.get("OPENSPEEDY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "openspeedy"
    )
    return Path(root)


def find_triton(root: Path | None = None) -> TritonInstall:
    """The server under ``root`` (given, or $OPENSPEEDY_TRITON_ROOT, or the container's /opt/tritonserver)
    if it is there, else the nvidia-pytriton wheel's. A root given explicitly must hold a server."""
    explicit = root is not None or bool(os.environ.get("OPENSPEEDY_TRITON_ROOT"))
    root = Path(root or os.environ.get("OPENSPEEDY_TRITON_ROOT") or CONTAINER_ROOT)
    if (root / "bin" / "tritonserver").exists():
        return TritonInstall(root / "bin" / "tritonserver", root / "backends", root / "caches")
    if explicit:
        raise RuntimeError(f"no tritonserver in {root} (expected {root / 'bin' / 'tritonserver'})")
    # Located, not imported: the package's __init__ pulls in its whole Python API, which serving never uses.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "no tritonserver found: install the server extra (pip install 'openspeedy[server]', which brings "
            f"nvidia-pytriton) or run in the NGC Triton container ({CONTAINER_ROOT})"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    wheel = package / "tritonserver"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python {python}")
    backends = _runtime_cache() / f"triton-backends-py{python}"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for source in [stub, *(wheel / "backends" / "python").glob("*.*")]:
        target = python_backend / source.name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    libs = [package.parent / "nvidia_pytriton.libs"]
    own_libpython = _libpython_folder(python)
    if own_libpython is not None:
        libs.insert(0, own_libpython)
    return TritonInstall(wheel / "bin" / "tritonserver", backends, wheel / "caches", tuple(libs))


def _libpython_folder(python: str) -> Path | None:
    """A folder that holds only links to this interpreter's shared libpython, for LD_LIBRARY_PATH.

    The stub links libpython3.X.so: it must be this interpreter's, not another build of the same minor
    version that the system may also carry (their extension modules are not interchangeable). The
    interpreter's own LIBDIR will not do: on Ubuntu it is /usr/lib/x86_64-linux-gnu, and every library
    there would then come before the ones torch was built with. On the GPU machine the stubs loaded the
    system's cuDNN 9.14 instead of torch's 9.19, silently, and its attention kernels were 40% slower."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    names = {sysconfig.get_config_var(name) or "" for name in ("LDLIBRARY", "INSTSONAME")}
    libraries = [libdir / name for name in sorted(names) if ".so" in name and (libdir / name).is_file()]
    if not libraries:
        return None  # a static libpython: the stub finds a shared one the usual way
    folder = _runtime_cache() / f"libpython-{python}"
    folder.mkdir(parents=True, exist_ok=True)
    for library in libraries:
        link = folder / library.name
        if not link.is_symlink() or link.resolve() != library.resolve():
            staged = folder / f".{library.name}.{os.getpid()}"  # renamed into place: servers may start at once
            staged.unlink(missing_ok=True)
            staged.symlink_to(library.resolve())
            staged.replace(link)
    return folder


@dataclass
class ServerOptions:
    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    # Per GPU. The python backend moves GPU tensors between model processes through this pool and
    # falls back to host copies when it runs dry; one denoising step at 704x1280 moves about 22 MB
    # through it for each request in flight, against Triton's default of 64 MiB.
    cuda_memory_pool_bytes: int = 256 * 2**20
    # Reload a model whose python backend stub died (openspeedy/watchdog.py); turns on explicit model
    # control, which loads every model at start as the default mode does.
    restart_dead_stubs: bool = True
    # The key of Triton's admin protocols (RESTRICTED_PROTOCOLS); None: admin_key_from_environment().
    admin_key: str | None = None
    # Seconds Triton waits on SIGTERM for the requests in flight: longer than the longest allowed request.
    exit_timeout_s: int = 30
    # Added to the server's environment, which its models' stubs inherit (e.g. OPENSPEEDY_REDIS_URL).
    environment: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    # The Triton installation (bin/, backends/, caches/); None: find_triton() decides.
    triton_root: Path | None = None
    # The public HTTP port is served by openspeedy/http_guard.py, which forwards to tritonserver's HTTP on a
    # private loopback port (0: a free one, kept across restarts). False: tritonserver serves http_port itself.
    http_guard: bool = True
    private_http_port: int = 0
    max_body_bytes: int = 64 * 2**20
    # serve_forever() restarts a tritonserver that died; this many deaths within crash_window_s end the
    # launcher instead (non-zero: the container is restarted, and a crash loop shows as one).
    max_crashes: int = 3
    crash_window_s: float = 300.0


def supports_flag(install: TritonInstall, flag: str) -> bool:
    """Whether this tritonserver knows ``flag`` (its --help lists it): e.g. --http-max-input-size, which
    Triton 2.51 lacks and later releases have."""
    return flag in _help_text(str(install.binary), os.pathsep.join(str(p) for p in install.library_paths))


@functools.lru_cache(maxsize=None)
def _help_text(binary: str, library_path: str) -> str:
    paths = [library_path, os.environ.get("LD_LIBRARY_PATH", "")]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(p for p in paths if p))
    try:
        result = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout + result.stderr


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def _gpu_count() -> int:
    if not _has_gpu():
        return 0
    import torch  # only where there are GPUs: counts the ones CUDA_VISIBLE_DEVICES leaves visible

    return torch.cuda.device_count()


class TritonServer:
    """A tritonserver process: ``start()`` returns once every model is ready; ``stop()`` ends it cleanly."""

    def __init__(self, options: ServerOptions, log_path: Path | None = None):
        self.options = options
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.watchdog: StubWatchdog | None = None
        self.admin_key = options.admin_key or admin_key_from_environment()
        self.guard = None  # openspeedy.http_guard.HttpGuard, while it runs
        self.triton_http_port = options.http_port
        if options.http_guard:
            self.triton_http_port = options.private_http_port or free_loopback_port()
        self._regions: set[str] = set()  # the stubs' shared-memory regions seen, removed once the server is gone
        self._stop_requested = threading.Event()
        self.fatal_signal = 0  # the signal tritonserver's handler said it caught (_copy_output)
        self._unloading_since = 0.0  # when tritonserver said it had only its models' unloading left
        self._line_closed_at = 0.0  # when the stream model's line said it was done (at its unload)
        self._stop_code: int | None = None  # what ending the current process gave, for a second stop() to repeat
        self._log = None

    @property
    def admin_headers(self) -> dict[str, str]:
        """The HTTP header that admits a request to the restricted protocols."""
        return {ADMIN_KEY_HEADER: self.admin_key}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The gRPC metadata that admits a call to the restricted protocols."""
        return {GRPC_ADMIN_KEY_HEADER: self.admin_key}

    @property
    def http_url(self) -> str:
        """The public HTTP endpoint (the guard's, when there is one)."""
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def triton_http_url(self) -> str:
        """Tritonserver's own HTTP endpoint: private (loopback) behind the guard."""
        return f"127.0.0.1:{self.triton_http_port}" if self.options.http_guard else self.http_url

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    def command(self, install: TritonInstall) -> list[str]:
        o = self.options
        return [
            str(install.binary),
            f"--model-repository={Path(o.model_repository).resolve()}",
            f"--backend-directory={install.backend_directory}",
            f"--cache-directory={install.cache_directory}",
            f"--http-address={'127.0.0.1' if o.http_guard else o.host}",
            f"--http-port={self.triton_http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            f"--allow-gpu-metrics={'true' if _has_gpu() else 'false'}",
            "--strict-readiness=true",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            *self.restriction_flags(),
            *self.body_limit_flags(install),
            *(f"--cuda-memory-pool-byte-size={gpu}:{o.cuda_memory_pool_bytes}" for gpu in range(_gpu_count())),
            *(EXPLICIT_MODEL_CONTROL if o.restart_dead_stubs else ()),
            *o.extra_args,
        ]

    def command_line_without_key(self) -> list[str]:
        """The command, for logs: the admin key replaced."""
        command = self.command(find_triton(self.options.triton_root))
        return [arg.replace(self.admin_key, "<admin key>") for arg in command]

    def body_limit_flags(self, install: TritonInstall) -> list[str]:
        """Triton's own bound on an HTTP body where it has one (not 2.51), the same as the guard's."""
        if supports_flag(install, "--http-max-input-size"):
            return [f"--http-max-input-size={self.options.max_body_bytes}"]
        return []

    def restriction_flags(self) -> list[str]:
        restriction = f"{','.join(RESTRICTED_PROTOCOLS)}:{ADMIN_KEY_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]

    def environment(self, install: TritonInstall) -> dict[str, str]:
        # The models never need the admin key: it stays with the launcher.
        env = {k: v for k, v in os.environ.items() if k not in (ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV)}
        env.update(self.options.environment)
        library_path = [str(p) for p in install.library_paths]
        if env.get("LD_LIBRARY_PATH"):
            library_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
        # The python backend stub runs the models with the `python3` first on PATH: make it ours.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self, timeout: float = 300.0, restart: bool = False) -> "TritonServer":
        """Starts the guard (once) and tritonserver; returns once every model is ready."""
        if self.options.http_guard and self.guard is None:
            from openspeedy.http_guard import HttpGuard  # aiohttp: only where a guard runs

            self.guard = HttpGuard(self.options.host, self.options.http_port, f"127.0.0.1:{self.triton_http_port}",
                                   self.options.max_body_bytes).start()
        install = find_triton(self.options.triton_root)
        if self.log_path is not None and self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.fatal_signal = 0
        self._unloading_since = self._line_closed_at = 0.0
        self._stop_code = None
        self.process = subprocess.Popen(
            self.command(install),
            env=self.environment(install),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGINT handling decides when it stops, not the terminal's
        )
        threading.Thread(target=self._copy_output, args=(self.process.stdout,), name="openspeedy-triton-log",
                         daemon=True).start()
        try:
            self.wait_ready(timeout)
            if self.options.restart_dead_stubs:
                self.watchdog = StubWatchdog(self.process.pid, self.options.model_repository, self.triton_http_url,
                                             headers=self.admin_headers).start()
        except BaseException:
            if restart:
                self._end_process(timeout=30)  # the guard stays: it answers 503 until a later start
            else:
                self.stop()
            raise
        return self

    def _copy_output(self, output) -> None:
        """Copies tritonserver's output to the log (or ours), watching for its fatal-signal handler's line.

        Triton catches SIGSEGV (and SIGABRT, SIGBUS, SIGFPE, SIGILL), prints "Signal (11) received." and then
        may hang in that handler, still answering ready: seen with a SIGSEGV sent to it. That line is as good
        as its death."""
        sink = self._log if self._log is not None else getattr(sys.stdout, "buffer", None)
        for line in iter(output.readline, b""):
            match = FATAL_SIGNAL_LINE.match(line)
            if match:
                self.fatal_signal = int(match.group(1))
            if UNLOADING_LINE.match(line):
                self._unloading_since = time.monotonic()
            if LINE_CLOSED.match(line):
                self._line_closed_at = time.monotonic()
            try:
                if sink is None:
                    sys.stdout.write(line.decode(errors="replace"))
                else:
                    sink.write(line)
                (sink or sys.stdout).flush()
            except (OSError, ValueError):  # the log closed under us at a stop
                pass
        output.close()

    def died(self) -> str:
        """Why tritonserver is dead (or as good as dead); empty while it runs."""
        if self.process is None:
            return ""
        if self.process.poll() is not None:
            return describe_exit(self.process.returncode)
        if self.fatal_signal:
            return f"{describe_exit(-self.fatal_signal)}, caught by its handler, which did not end it"
        return ""

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.triton_http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.died():
                raise RuntimeError(
                    f"tritonserver died ({self.died()}) before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if self._stop_requested.is_set():
                raise StopRequested("a stop was asked for while tritonserver was starting")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver was not ready within {timeout:.0f} s")

    def request_stop(self) -> None:
        """Makes a start in progress give up (for a signal handler)."""
        self._stop_requested.set()

    def _learn_regions(self) -> None:
        """Notes the shared-memory regions of the server's stubs alive now: the server runs in a process group
        of its own, which its stubs keep even once it is dead."""
        if self.process is None:
            return
        for process in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(process.pid) == self.process.pid and process.info["cmdline"]:
                    region = stub_region(process.info["cmdline"])
                    if region:
                        self._regions.add(region)
            except (ProcessLookupError, psutil.Error):
                continue

    def _end_process(self, timeout: float) -> int | None:
        """Stops tritonserver (SIGTERM, SIGKILL to its group past ``timeout``) and removes every stub region it
        left: Triton removes them on a clean exit, but neither a crash nor a kill does."""
        if self.process is None:
            return None
        if self._stop_code is not None:  # already ended: by a start that gave up, then by serve_forever's stop
            return self._stop_code
        if self.watchdog is not None:
            self.watchdog.stop()  # first: the models' stubs end with the server, nothing to reload
            self._regions |= self.watchdog.known_regions()
            self.watchdog = None
        self._learn_regions()
        hung_unloading = False
        if self.process.poll() is None:
            if timeout > 0:
                started = time.monotonic()
                self._finish_stream_line(timeout)
                timeout = max(1.0, timeout - (time.monotonic() - started))
            self.process.send_signal(signal.SIGTERM)
            hung_unloading = self._wait_for_stop(timeout)
        # Whatever is left of the group (a hung server, or the stubs a crashed one orphaned) goes with it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        removed = [region for region in sorted(self._regions) if remove_region(region)]
        if removed:
            print(f"openspeedy: removed {len(removed)} shared-memory region(s) tritonserver left in /dev/shm",
                  flush=True)
        self._regions.clear()
        # Every request had finished and every other model had unloaded: nothing was lost, the stop is clean.
        self._stop_code = 0 if hung_unloading else self.process.returncode
        return self._stop_code

    def _finish_stream_line(self, timeout: float) -> None:
        """Unloads the stream model before the rest, waiting up to Triton's exit timeout (and ``timeout``).

        The stream model keeps its waiting and running requests in its own line (openspeedy.serving.line),
        which Triton does not count as requests in flight: at a SIGTERM it would unload the components under
        them. Unloaded first, it takes no new request and Triton waits for those its line holds, which
        finish while the components still serve them. Needs the model-control API (explicit mode, which the
        watchdog turns on); without it, a SIGTERM fails the stream requests still held."""
        model = I2VGEN_XL_STREAM.name
        if not self.options.restart_dead_stubs or not (self.options.model_repository / model).is_dir():
            return
        headers = {"Content-Type": "application/json", **self.admin_headers}

        def post(path: str):
            request = urllib.request.Request(f"http://{self.triton_http_url}/v2/repository/{path}", data=b"{}",
                                             method="POST", headers=headers)
            return urllib.request.urlopen(request, timeout=10)

        try:
            post(f"models/{model}/unload").close()
        except OSError as error:
            print(f"openspeedy: could not unload {model} before the stop ({error}); stopping at once", flush=True)
            return
        deadline = time.monotonic() + min(timeout, self.options.exit_timeout_s)
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with post("index") as response:
                    states = {entry["name"]: entry.get("state") for entry in json.loads(response.read())}
            except (OSError, ValueError):
                return
            if states.get(model) not in ("READY", "UNLOADING"):
                return
            if self._line_closed_at and time.monotonic() - self._line_closed_at > UNLOAD_GRACE_S:
                return  # its line is done; what still holds it is Triton's (see _wait_for_stop): the stop ends it
            time.sleep(0.2)
        print(f"openspeedy: {model} did not unload within {self.options.exit_timeout_s} s; stopping anyway",
              flush=True)

    def _wait_for_stop(self, timeout: float) -> bool:
        """Waits for tritonserver to exit after SIGTERM; True if it was ended for hanging in its unloading.

        Triton 2.51's gRPC stream handler never releases its state for a request it refused when starting it
        (seen with the stream model's queue full; its source takes the same path for any error there) once
        the client cancels that stream: the state is tracked neither as in flight nor as done. It holds the
        request, and the request its model, so at a stop Triton finishes every request, unloads every other
        model, and waits for the stream model for its whole exit timeout (its stub is then killed and its
        /dev/shm region left). Any client can do this; ours closes a refused stream without cancelling it.
        No request is in flight by then, so the launcher gives the unloading UNLOAD_GRACE_S and ends it,
        saying so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.process.wait(0.2)
                return False
            except subprocess.TimeoutExpired:
                pass
            if self._unloading_since and time.monotonic() - self._unloading_since > UNLOAD_GRACE_S:
                print(f"openspeedy: tritonserver finished every request but its models did not unload within "
                      f"{UNLOAD_GRACE_S:g} s; ending it", flush=True)
                return True
        if timeout > 0:  # 0: a dead or hung server after a crash, ended without waiting
            print(f"openspeedy: tritonserver did not stop within {timeout:.0f} s; killing it", flush=True)
        return False

    def restart_after_crash(self, timeout: float = 300.0) -> None:
        """Cleans up after a tritonserver that died (its orphaned stubs, their shared memory) and starts a new
        one on the same ports; the guard keeps answering 503 meanwhile."""
        self._end_process(timeout=0)
        self.start(timeout, restart=True)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton lets the requests in flight finish, unloads its models and stops its stubs), then
        SIGKILL to the group if it hangs: by default once Triton's own exit timeout is well past."""
        timeout = self.options.exit_timeout_s + 30.0 if timeout is None else timeout
        code = self._end_process(timeout)
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class StopRequested(RuntimeError):
    """SIGINT or SIGTERM came while tritonserver was starting."""


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_exit(returncode: int) -> str:
    """'signal SIGSEGV' for a process killed by a signal, else 'exit code N'."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def serve_forever(server: TritonServer) -> int:
    """Runs until SIGINT/SIGTERM; restarts tritonserver when it dies, unless it died ``max_crashes`` times within
    ``crash_window_s`` (then 1, so that the container restarts). Returns the server's exit code at a stop."""
    stopping = False
    crashes: deque[float] = deque()
    options = server.options

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True
        server.request_stop()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
            print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}",
                  flush=True)
        except (RuntimeError, TimeoutError) as error:
            if isinstance(error, StopRequested) or not server.died():
                raise  # no server process at all (none installed): nothing to restart
            # Died while starting (a crash as any other, counted below), or never got ready (ended by start()).
            print(f"openspeedy: {error}", file=sys.stderr, flush=True)
        while not stopping:
            if server.watchdog is not None and server.watchdog.gave_up:
                # A model that cannot come back: exit, so that the container (or the operator) restarts us.
                print(f"openspeedy: giving up: {server.watchdog.gave_up}", file=sys.stderr, flush=True)
                server.stop()
                return 1
            if server.died():
                now = time.monotonic()
                crashes.append(now)
                while crashes and now - crashes[0] > options.crash_window_s:
                    crashes.popleft()
                print(f"openspeedy: tritonserver died ({server.died()}); "
                      f"crash {len(crashes)} of at most {options.max_crashes} within {options.crash_window_s:g} s",
                      file=sys.stderr, flush=True)
                if len(crashes) >= options.max_crashes:
                    print(f"openspeedy: giving up: tritonserver died {len(crashes)} times within "
                          f"{options.crash_window_s:g} s", file=sys.stderr, flush=True)
                    server.stop()
                    return 1
                try:
                    server.restart_after_crash()
                    print("openspeedy: tritonserver restarted and ready", file=sys.stderr, flush=True)
                except (RuntimeError, TimeoutError) as error:  # counted as the next crash, one round later
                    if isinstance(error, StopRequested):
                        raise
                    print(f"openspeedy: restarting tritonserver failed: {error}", file=sys.stderr, flush=True)
                continue
            time.sleep(0.2)
    except StopRequested:
        pass
    finally:
        code = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code or 0
