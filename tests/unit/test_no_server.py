"""Unit tests cannot start tritonserver: in process, and through any child process they run."""

import subprocess
import sys

import pytest

from openspeedy.server import ServerOptions, TritonServer
from tests.unit.conftest import REFUSAL


def test_starting_tritonserver_in_a_unit_test_fails(tiny_repository):
    with pytest.raises(RuntimeError, match="unit tests start no tritonserver"):
        TritonServer(ServerOptions(tiny_repository)).start()


def test_a_child_process_finds_only_a_refusing_tritonserver(no_tritonserver):
    found = subprocess.run([sys.executable, "-c", "from openspeedy.server import find_triton; "
                            "print(find_triton().binary)"], capture_output=True, text=True, check=True)
    binary = found.stdout.strip()
    assert binary == str(no_tritonserver / "bin" / "tritonserver")
    ran = subprocess.run([binary, "--model-repository", "x"], capture_output=True, text=True)
    assert ran.returncode == 3 and REFUSAL in ran.stderr


def test_the_server_fixtures_are_not_loaded(request):
    with pytest.raises(pytest.FixtureLookupError):
        request.getfixturevalue("triton")
