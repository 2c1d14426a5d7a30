"""What torch.compile made at export, shipped in the model repository and loaded at start-up, so that a fresh
replica (empty local caches) serves compiled models without compiling them again.

torch's portable caches (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``) hold Inductor's
compiled graphs with their Triton kernels, AOTAutograd's entries and the autotuning results. Loaded before
the first compile, each compile of the same graph in this process is a cache hit: seconds instead of
minutes a shape. Their entries are keyed by the graph and by torch's code and settings, so a stale entry is
a miss, never a wrong kernel; the header beside them names the torch, Triton and CUDA versions and the GPU
they were made with, so that a mismatch is said in one log line instead of being a silent slow start.
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path
from typing import Iterator

import torch

ARTIFACTS_FILE = "compile_artifacts.bin"
HEADER_FILE = "compile_artifacts.json"


def environment(device: torch.device) -> dict[str, str]:
    """What the artifacts depend on beyond the graph: a difference compiles instead of loading."""
    found = {"torch": torch.__version__, "python": platform.python_version(), "device": device.type}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        found |= {"cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name(device),
                  "compute_capability": f"{major}.{minor}"}
        try:
            import triton

            found["triton"] = triton.__version__
        except ImportError:
            pass
    return found


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Within it, ``save`` writes only what was compiled (or read from the local caches) inside it: one
    model's artifacts, not those of every model that the same export process compiled before."""
    # torch keeps one process-wide list of what its caches wrote; this swaps in a fresh one. No public
    # call scopes it (save_cache_artifacts hands back everything since the process started).
    from torch.compiler._cache import CacheArtifactManager

    with CacheArtifactManager.with_fresh_cache():
        yield


def save(directory: Path, device: torch.device) -> int:
    """Writes what this process compiled (within ``recording``) into ``directory``; the entries written."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return 0
    data, info = artifacts
    counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
    (directory / ARTIFACTS_FILE).write_bytes(data)
    header = {"environment": environment(device), "entries": counts}
    (directory / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
    return sum(counts.values())


def load(directory: Path, device: torch.device) -> str:
    """Loads ``directory``'s artifacts into this process's compile caches where they were made for this
    environment; returns the log line that says what happened."""
    path = directory / ARTIFACTS_FILE
    if not path.exists():
        return f"compile artifacts: none in {directory}; each shape compiles at warm-up"
    header = json.loads((directory / HEADER_FILE).read_text())
    made_for, here = header.get("environment", {}), environment(device)
    differences = [f"{key} {made_for.get(key)!r} (here {value!r})" for key, value in here.items()
                   if made_for.get(key) != value]
    if differences:
        return (f"compile artifacts in {directory} were made for another environment: "
                f"{', '.join(differences)}; compiling instead")
    info = torch.compiler.load_cache_artifacts(path.read_bytes())
    if info is None:
        return f"compile artifacts in {path} could not be read (another torch build?); compiling instead"
    counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
    return f"compile artifacts: loaded {sum(counts.values())} entries ({counts}) from {path}"


def compile_counts() -> dict[str, int]:
    """Inductor's graph compiles in this process so far, by how each was served (torch's own counters):
    ``compiled`` (a cache miss), ``from_cache`` (a hit) and ``uncacheable`` (the cache bypassed)."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"compiled": inductor["fxgraph_cache_miss"], "from_cache": inductor["fxgraph_cache_hit"],
            "uncacheable": inductor["fxgraph_cache_bypass"]}
