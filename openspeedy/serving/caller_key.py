"""The key the orchestrator's BLS requests carry, so the component models answer the entry models alone.

Triton serves every loaded model to every client and has no per-model access rule, so a component
checks a request parameter instead. The key is made per server run by the first of its model processes
that asks, and shared with the others through a file that only the server's user can read. It is in
no model config (any client can read those) and no client sees it: a BLS request's parameters stay
inside the server.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path

# A request parameter: Triton passes a request's parameters to the model (request.parameters()).
PARAMETER = "openspeedy_caller_key"
ENTRY_MODELS = "i2vgen_xl, i2vgen_xl_stream"


class NotTheOrchestrator(PermissionError):
    """A component model was called by someone other than an entry model of its server."""

    def __init__(self, model_name: str, triton_code: int):
        super().__init__(f"model '{model_name}' is internal to this server: it answers only its entry models "
                         f"({ENTRY_MODELS}); send requests to those")
        self.triton_code = triton_code


def key_path(server_pid: int | None = None) -> Path:
    """Where the key of the server whose model processes (python backend stubs) are children of it lives."""
    server_pid = os.getppid() if server_pid is None else server_pid
    return Path(tempfile.gettempdir()) / f"{_NAME}{os.getuid()}-{server_pid}"


_NAME = "openspeedy-caller-key-"


def remove_stale_keys() -> list[Path]:
    """Removes this user's keys of servers that no longer run (a server leaves its key behind)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{_NAME}{os.getuid()}-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process of that id: not ours to judge
    return True


@functools.cache
def server_key() -> str:
    """This server run's key, made by the first model process that asks (an atomic link decides which)."""
    path = key_path()
    if not path.exists():
        remove_stale_keys()
        temporary = path.with_name(f"{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another model process was first: its key is the server's
        finally:
            temporary.unlink()
    # The temporary folder is shared: a file another user planted there would be a key they know.
    status = path.stat()
    if status.st_uid != os.getuid() or stat.S_IMODE(status.st_mode) & 0o077:
        raise PermissionError(f"{path} must belong to this user and be readable by it alone")
    return path.read_text()


def carries_key(request_parameters: str) -> bool:
    """Whether a request's parameters (Triton's JSON text) carry this server's key."""
    try:
        sent = json.loads(request_parameters or "{}").get(PARAMETER)
    except (ValueError, AttributeError):
        return False
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), server_key().encode())
