"""A real tritonserver on the tiny repository, over HTTP and gRPC: outputs, determinism, errors."""

import numpy as np
import psutil
import pytest

from openspeedy.client import Client, GenerationError
from openspeedy.client.api import request_arrays
from openspeedy.video import decode_video
from tests.helpers import encode, random_image

pytestmark = pytest.mark.server

PROTOCOLS = ["grpc", "http"]


@pytest.fixture(params=PROTOCOLS)
def client(request, triton):
    url = triton.grpc_url if request.param == "grpc" else triton.http_url
    with Client(url, request.param) as client:
        yield client


IMAGE = encode(random_image(120, 80, seed=7))
FAST = dict(num_inference_steps=3)


@pytest.mark.parametrize(
    "frames, height, width",
    [(8, 64, 64), (1, 32, 32), (5, 64, 96), (12, 96, 40), (3, 128, 128)],
)
def test_video_shape_and_type(client, frames, height, width):
    video = client.generate(IMAGE, "a cat", num_frames=frames, height=height, width=width, seed=1, **FAST)
    assert video.frames.dtype == np.uint8
    assert video.frames.shape == (frames, height, width, 3)
    assert video.mp4 is None


def test_defaults_come_from_the_exported_config(client):
    video = client.generate(IMAGE, "a cat", seed=1, **FAST)
    assert video.frames.shape == (8, 64, 64, 3)  # the tiny export's defaults


@pytest.mark.parametrize(
    "fmt, mode, size",
    [("PNG", "RGBA", (50, 90)), ("PNG", "L", (90, 50)), ("PNG", "P", (64, 64)), ("JPEG", "RGB", (200, 60)),
     ("WEBP", "RGB", (33, 77)), ("WEBP", "RGBA", (77, 33)), ("BMP", "RGB", (120, 80))],
)
def test_image_formats_modes_and_aspect_ratios(client, fmt, mode, size):
    image = encode(random_image(*size, mode=mode, seed=2), fmt)
    video = client.generate(image, "", num_frames=4, height=64, width=96, seed=3, **FAST)
    assert video.frames.shape == (4, 64, 96, 3)


def test_same_seed_same_bytes_other_seed_other_video(client):
    first = client.generate(IMAGE, "waves", num_frames=4, seed=11, **FAST).frames
    again = client.generate(IMAGE, "waves", num_frames=4, seed=11, **FAST).frames
    other = client.generate(IMAGE, "waves", num_frames=4, seed=12, **FAST).frames
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)


def test_grpc_and_http_give_the_same_video(triton):
    with Client(triton.grpc_url, "grpc") as grpc_client, Client(triton.http_url, "http") as http_client:
        a = grpc_client.generate(IMAGE, "x", num_frames=4, seed=5, **FAST).frames
        b = http_client.generate(IMAGE, "x", num_frames=4, seed=5, **FAST).frames
    assert a.tobytes() == b.tobytes()


def test_mp4_has_the_frames(client):
    video = client.generate(IMAGE, "a dog", num_frames=7, height=64, width=96, seed=4, frames=True, mp4=True, **FAST)
    decoded = decode_video(video.mp4)
    assert decoded.shape == video.frames.shape == (7, 64, 96, 3)
    # H.264 is lossy: the decoded frames are close to, not equal to, the raw ones.
    assert np.abs(decoded.astype(int) - video.frames.astype(int)).mean() < 40


def test_mp4_only(client):
    video = client.generate(IMAGE, "a dog", num_frames=3, seed=4, frames=False, mp4=True, **FAST)
    assert video.frames is None and decode_video(video.mp4).shape[0] == 3


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(height=60), "HEIGHT"),
        (dict(width=1000), "WIDTH"),
        (dict(num_frames=0), "NUM_FRAMES"),
        (dict(num_frames=1000), "NUM_FRAMES"),
        (dict(num_inference_steps=0), "NUM_INFERENCE_STEPS"),
        (dict(guidance_scale=float("inf")), "GUIDANCE_SCALE"),
        (dict(target_fps=-3), "TARGET_FPS"),
        (dict(seed=-1), "SEED"),
        (dict(decode_chunk_size=-2), "DECODE_CHUNK_SIZE"),
    ],
)
def test_out_of_range_inputs_are_named(client, options, name):
    with pytest.raises(GenerationError, match=f"'{name}'"):
        client.generate(IMAGE, "x", **options)
    assert client.generate(IMAGE, "x", num_frames=2, seed=1, **FAST).frames.shape[0] == 2


@pytest.mark.parametrize(
    "arrays, name",
    [
        ({"IMAGE": np.array([b"garbage"], dtype=object)}, "IMAGE"),
        ({"IMAGE": np.array([encode(random_image(4000, 4000))], dtype=object)}, "IMAGE"),  # 16 M pixels > limit
        ({"PROMPT": np.array([b"\xff\xfe\xfd"], dtype=object)}, "PROMPT"),
        ({"NEGATIVE_PROMPT": np.array([b"\xe2\x82"], dtype=object)}, "NEGATIVE_PROMPT"),
        ({"NUM_FRAMES": np.array([4], dtype=np.float32)}, "NUM_FRAMES"),  # wrong type: Triton refuses it
        ({"HEIGHT": np.array([64, 64], dtype=np.int32)}, "HEIGHT"),  # wrong shape: Triton refuses it
    ],
)
def test_malformed_inputs_are_named(client, arrays, name):
    request = request_arrays(IMAGE, "x", num_frames=2, **FAST)
    request.update(arrays)
    with pytest.raises(GenerationError, match=name):
        client.infer_arrays(request)
    assert client.generate(IMAGE, "x", num_frames=2, seed=1, **FAST).frames.shape[0] == 2


@pytest.mark.parametrize("missing", ["IMAGE", "PROMPT"])
def test_missing_required_input(client, missing):
    request = request_arrays(IMAGE, "x", num_frames=2, **FAST)
    del request[missing]
    with pytest.raises(GenerationError, match=missing):
        client.infer_arrays(request)


def test_server_stops_cleanly_without_leftover_processes(tiny_repository):
    from openspeedy.server import ServerOptions, TritonServer
    from tests.helpers import free_port

    options = ServerOptions(tiny_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer(options).start()
    stubs = [p for p in psutil.Process(server.process.pid).children(recursive=True)]
    assert stubs, "the python backend runs its models in stub processes"
    with Client(server.grpc_url) as client:
        assert client.generate(IMAGE, "x", num_frames=2, seed=1, **FAST).frames.shape[0] == 2
    assert server.stop() == 0
    psutil.wait_procs(stubs, timeout=10)
    assert not [p for p in stubs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_library_path_adds_only_libpython_and_the_wheels_own_libraries():
    """The server's LD_LIBRARY_PATH, which its stubs inherit, comes before the libraries torch was built
    with: a folder of system libraries there once gave the GPU stubs an older cuDNN (40% slower attention)."""
    import os
    from pathlib import Path

    from openspeedy.server import ServerOptions, TritonServer, find_triton

    install = find_triton()
    if not install.library_paths:
        pytest.skip("the container's tritonserver adds no library path")
    path = TritonServer(ServerOptions(Path("."))).environment(install)["LD_LIBRARY_PATH"].split(os.pathsep)
    assert path[: len(install.library_paths)] == [str(p) for p in install.library_paths]
    for folder in install.library_paths:
        names = os.listdir(folder)
        assert folder.name == "nvidia_pytriton.libs" or (names and all(n.startswith("libpython") for n in names))


def test_stubs_run_this_interpreters_libpython(triton):
    """What the libpython folder is for: the stubs load this interpreter's libpython, not another build."""
    import os
    import sysconfig

    from openspeedy.watchdog import stub_processes

    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    own = os.path.join(libdir or "", soname or "")
    if not os.path.isfile(own) or ".so" not in own:
        pytest.skip("this interpreter has no shared libpython")
    stubs = [stub for stubs in stub_processes(triton.process.pid, triton.options.model_repository).values()
             for stub in stubs]
    assert stubs
    for stub in stubs:
        loaded = {m.path for m in stub.memory_maps() if os.path.basename(m.path).startswith("libpython")}
        assert {os.path.realpath(path) for path in loaded} == {os.path.realpath(own)}, stub.cmdline()
