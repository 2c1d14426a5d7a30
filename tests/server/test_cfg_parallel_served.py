"""CFG-parallel through a real tritonserver: a repository exported with cfg_parallel (two CPU `unet`
instances) sends each guided step's two halves as two concurrent BLS requests, and serves the batched
server's video for the same seed. Not bit for bit: a batch-1 and a batch-2 CPU convolution may round
differently (latents within 1e-5 relative, tests/unit/test_cfg_parallel.py), which can move a pixel by
one uint8 step; the bound is the one serving already allows (tests/server/test_approximations_served.py)."""

from pathlib import Path

import numpy as np
import pytest

from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from tests.helpers import free_port, parse
from tests.server.test_approximations_served import APPROXIMATIONS, served
from tests.unit.test_reference_parity import make_request


@pytest.fixture(scope="module")
def cfg_parallel_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("repository_cfg_parallel") / "models"
    return build_repository(tiny_checkpoint, output, ExportOptions(settings=TINY_SETTINGS, cfg_parallel=True))


@pytest.fixture(scope="module")
def cfg_parallel_triton(cfg_parallel_repository):
    """A real tritonserver on the cfg_parallel repository, beside the session's batched one."""
    from openspeedy.server import ServerOptions, TritonServer

    options = ServerOptions(cfg_parallel_repository, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    log = Path("build/test-logs/triton_cfg_parallel.log")
    log.unlink(missing_ok=True)
    server = TritonServer(options, log_path=log).start()
    yield server
    assert server.stop() == 0, f"tritonserver did not stop cleanly; see {log}"


def unet_requests(server) -> int:
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, connection_timeout=10, network_timeout=30)
    try:
        return int(client.get_inference_statistics("unet")["model_stats"][0]["inference_count"])
    finally:
        client.close()


def close_videos(a: np.ndarray, b: np.ndarray) -> bool:
    delta = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return a.shape == b.shape and delta.max() <= 1 and (delta > 0).mean() <= 1e-3


def test_exported_unet_has_two_instances_and_the_entry_model_the_switch(cfg_parallel_repository):
    unet = parse(cfg_parallel_repository / "unet" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2

    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [(group.count, group.kind) for group in unet.instance_group] == [(2, cpu)]
    entry = parse(cfg_parallel_repository / "i2vgen_xl" / "config.pbtxt")
    assert entry.parameters["cfg_parallel"].string_value == "true"


@pytest.mark.parametrize("approximations", [{}, APPROXIMATIONS], ids=["plain", "feature-reuse-and-guidance-interval"])
def test_halves_serve_the_batched_video(triton, cfg_parallel_triton, approximations):
    request = make_request()
    before = unet_requests(cfg_parallel_triton)
    video = served(cfg_parallel_triton, request, **approximations)
    requests = unet_requests(cfg_parallel_triton) - before
    batched = served(triton, request, **approximations)
    assert close_videos(video, batched)
    steps = request.num_inference_steps
    guided = sum(make_request(**approximations).guided(step, steps) for step in range(steps))
    assert requests == 2 * guided + (steps - guided)  # two one-row requests per guided step, one otherwise
    assert (guided < steps) == bool(approximations)
    if not approximations:  # the bound tells videos apart: another seed is far outside it
        assert not close_videos(video, served(triton, make_request(SEED=np.array([7], np.int64))))
