"""Starting and stopping a real ``tritonserver`` on a model repository.

Two installations are known: the NGC container's ``/opt/tritonserver`` (production, TensorRT backend
included) and the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships (development and
CI machines, python backend only). The wheel's python backend needs its stub for this Python next to
it, so a backend directory is assembled once in a cache folder.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from openspeedy.watchdog import EXPLICIT_MODEL_CONTROL, StubWatchdog

CONTAINER_ROOT = Path("/opt/tritonserver")

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
        return f"{self.options.host}:{self.options.http_port}"

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
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            f"--allow-gpu-metrics={'true' if _has_gpu() else 'false'}",
            "--strict-readiness=true",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            *self.restriction_flags(),
            *(f"--cuda-memory-pool-byte-size={gpu}:{o.cuda_memory_pool_bytes}" for gpu in range(_gpu_count())),
            *(EXPLICIT_MODEL_CONTROL if o.restart_dead_stubs else ()),
            *o.extra_args,
        ]

    def command_line_without_key(self) -> list[str]:
        """The command, for logs: the admin key replaced."""
        command = self.command(find_triton(self.options.triton_root))
        return [arg.replace(self.admin_key, "<admin key>") for arg in command]

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

    def start(self, timeout: float = 300.0) -> "TritonServer":
        install = find_triton(self.options.triton_root)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(install),
            env=self.environment(install),
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,  # our SIGINT handling decides when it stops, not the terminal's
        )
        try:
            self.wait_ready(timeout)
            if self.options.restart_dead_stubs:
                self.watchdog = StubWatchdog(self.process.pid, self.options.model_repository, self.http_url,
                                             headers=self.admin_headers).start()
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver was not ready within {timeout:.0f} s")

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton lets the requests in flight finish, unloads its models and stops its stubs), then
        SIGKILL to the group if it hangs: by default once Triton's own exit timeout is well past."""
        timeout = self.options.exit_timeout_s + 30.0 if timeout is None else timeout
        if self.process is None:
            return None
        if self.watchdog is not None:
            self.watchdog.stop()  # first: the models' stubs end with the server, nothing to reload
            self.watchdog = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The server runs in a process group of its own: whatever is left of it (a hung server, or the
        # stubs a crashed one orphaned) goes with it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(server: TritonServer) -> int:
    """Runs until SIGINT/SIGTERM or until the server dies; returns the server's exit code."""
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}",
              flush=True)
        while not stopping and server.process.poll() is None:
            if server.watchdog is not None and server.watchdog.gave_up:
                # A model that cannot come back: exit, so that the container (or the operator) restarts us.
                print(f"openspeedy: giving up: {server.watchdog.gave_up}", file=sys.stderr, flush=True)
                server.stop()
                return 1
            time.sleep(0.2)
    finally:
        code = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code or 0
