"""Served (Triton, KIND_GPU) against in-process time on the GPU, full-size architecture with RANDOM fp16
weights: the same pipeline code, the same request, through tritonserver's gRPC endpoint and in process.

Runs on the GPU machine under a Python whose numpy is 1.x: the nvidia-pytriton 0.7.0 python backend
stub reads NumPy 2 arrays wrongly (every element as the first one). Its pybind11 interop predates
NumPy 2, whose array descriptor layout changed, so the stub must import numpy 1.26 (see
bench/gpu_serving.sh, which builds such an environment from carried wheels).

Also records Triton's per-model statistics, the orchestrator's mean step, and the in-process time with
a synchronization after every UNet call (what a call through Triton imposes).

Usage: python bench/gpu_serving.py --out DIR [--requests 3] [--steps 50] [--unet-compile-mode MODE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_bench import DEVICE, client_options, run_openspeedy, video_request  # noqa: E402

from export.random_checkpoint import FULL_SIZE, build_checkpoint  # noqa: E402
from export.repository import ExportOptions, build_repository, model_configs  # noqa: E402
from openspeedy.client.api import Client  # noqa: E402
from openspeedy.components import WEIGHT_FOLDERS, load_component  # noqa: E402
from openspeedy.server import ServerOptions, TritonServer  # noqa: E402


def model_statistics(triton_client) -> dict:
    """Per model: requests, and mean ms of queue / input / compute / output, from Triton's statistics."""
    table = {}
    for model in triton_client.get_inference_statistics(as_json=True)["model_stats"]:
        stats = model["inference_stats"]
        count = int(stats["success"].get("count", 0))
        if count:
            table[model["name"]] = dict(requests=count, **{
                f"{part}_ms": int(stats[part].get("ns", 0)) / count / 1e6
                for part in ("queue", "compute_input", "compute_infer", "compute_output")})
    return table


def mean_step_seconds(metrics_url: str) -> float | None:
    """Mean of the orchestrator's denoising-step histogram (UNet BLS call + scheduler step)."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith("openspeedy_denoising_step_seconds" + suffix):
                values[suffix] = values.get(suffix, 0.0) + float(line.rsplit(" ", 1)[1])
    return values["_sum"] / values["_count"] if values.get("_count") else None


class SynchronizedUNet:
    """The UNet component, synchronizing after every call as a call through Triton does (the stub waits
    for the output before it answers): the in-process cost of losing CPU/GPU overlap between steps."""

    def __init__(self, unet):
        self.unet, self.contract = unet, unet.contract

    def infer(self, inputs):
        outputs = self.unet.infer(inputs)
        torch.cuda.synchronize()
        return outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/i2vgen_xl_full_random"))
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--unet-compile-mode", default="", help="torch.compile mode of the UNet, served and in process")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("numpy", np.__version__, "torch", torch.__version__, flush=True)
    if not (args.checkpoint / "model_index.json").exists():
        with torch.device(DEVICE):
            build_checkpoint(args.checkpoint, FULL_SIZE, dtype=torch.float16)

    request = video_request(args.steps)
    size = f"{request.num_frames}x{request.height}x{request.width}"
    export = ExportOptions(device="gpu", dtype="float16", unet_compile_mode=args.unet_compile_mode,
                           warmup_shapes=size if args.unet_compile_mode else "")
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, numpy=np.__version__,
                   note=f"full-size architecture, RANDOM fp16 weights; {size}; UNet "
                        f"{'torch.compile ' + args.unet_compile_mode if args.unet_compile_mode else 'eager'}",
                   steps=args.steps)

    def save() -> None:
        (args.out / "gpu_serving.json").write_text(json.dumps(results, indent=2))

    # In process first: a compiled UNet fills Inductor's cache (TORCHINDUCTOR_CACHE_DIR), which the
    # served UNet's warm-up then reads instead of compiling again.
    unet_options = model_configs_unet_parameters(export)
    components = {name: load_component(name, args.checkpoint, DEVICE, "float16", unet_options if name == "unet" else {})
                  for name in WEIGHT_FOLDERS}
    seconds, _, in_process, _ = run_openspeedy(args.checkpoint, components, request, repeats=args.requests)
    results["in_process_s"] = seconds
    synchronized = components | {"unet": SynchronizedUNet(components["unet"])}
    results["in_process_synchronized_per_step_s"], *_ = run_openspeedy(args.checkpoint, synchronized, request,
                                                                        repeats=args.requests)
    save()
    del components, synchronized
    torch.cuda.empty_cache()

    repository = build_repository(args.checkpoint, Path("/tmp/gpu_repository"), export)
    options = client_options(request)
    server = TritonServer(ServerOptions(repository), log_path=args.out / "triton.log")
    started = time.perf_counter()
    server.start(timeout=900)
    results["server_start_s"] = time.perf_counter() - started
    try:
        with Client(server.grpc_url, timeout_s=600) as client:
            served_times, served = [], None
            for _ in range(args.requests + 1):  # the first one warms up
                t = time.perf_counter()
                served = client.generate(request.image_bytes, request.prompt, **options).frames
                served_times.append(time.perf_counter() - t)
            results["served_s"] = statistics.median(served_times[1:])
            results["served_all_s"] = served_times
            results["triton_models"] = model_statistics(client._client)
        results["served_denoising_step_s"] = mean_step_seconds(server.metrics_url)
    finally:
        server.stop()
    results["overhead"] = results["served_s"] / results["in_process_s"] - 1
    results["served_equals_in_process"] = bool(np.array_equal(served, in_process))
    results["max_abs_uint8_served_vs_in_process"] = float(np.abs(served.astype(int) - in_process.astype(int)).max())
    save()
    print(json.dumps(results, indent=2))


def model_configs_unet_parameters(export: ExportOptions) -> dict[str, str]:
    """The `unet` model's config parameters for these export options: the same runtime in process."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(model_configs(export, 0.18125)["unet"], model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


if __name__ == "__main__":
    main()
