"""Unit tests start no server: tritonserver is refused here, in this process and in any child it starts.

The server fixtures live in tests/server/conftest.py, which pytest never loads for tests/unit alone
(`make test-unit`); this guard makes a server start fail loudly instead of passing unnoticed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

REFUSAL = "unit tests start no tritonserver: put this test in tests/server/"


@pytest.fixture(scope="package", autouse=True)  # torn down when tests/unit is done
def no_tritonserver(tmp_path_factory):
    # A child process (the `openspeedy` command, a bench script) finds tritonserver through
    # OPENSPEEDY_TRITON_ROOT first: point it at a binary that refuses.
    root = tmp_path_factory.mktemp("refusing_triton")
    binary = root / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text(f"#!/bin/sh\necho '{REFUSAL}' >&2\nexit 3\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    previous = os.environ.get("OPENSPEEDY_TRITON_ROOT")
    os.environ["OPENSPEEDY_TRITON_ROOT"] = str(root)

    # In this process: refuse before anything is spawned.
    from openspeedy.server import TritonServer

    original = TritonServer.start

    def refuse(self, *args, **kwargs):
        raise RuntimeError(REFUSAL)

    TritonServer.start = refuse
    yield Path(root)
    TritonServer.start = original
    if previous is None:
        os.environ.pop("OPENSPEEDY_TRITON_ROOT", None)
    else:
        os.environ["OPENSPEEDY_TRITON_ROOT"] = previous
