"""Served (Triton, KIND_GPU) against in-process time on the GPU, full-size architecture with RANDOM fp16
weights: the same pipeline code, the same request, through tritonserver's gRPC endpoint and in process.

Runs on the GPU machine under a Python whose numpy is 1.x: the nvidia-pytriton 0.7.0 python backend
stub reads NumPy 2 arrays wrongly (every element as the first one). Its pybind11 interop predates
NumPy 2, whose array descriptor layout changed, so the stub must import numpy 1.26 (see
bench/gpu_serving.sh, which builds such an environment from carried wheels).

Usage: python bench/gpu_serving.py --out DIR [--requests 3] [--steps 50]
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

from gpu_bench import DEVICE, run_openspeedy, video_request  # noqa: E402

from export.random_checkpoint import FULL_SIZE, build_checkpoint  # noqa: E402
from export.repository import ExportOptions, build_repository  # noqa: E402
from openspeedy.client.api import Client  # noqa: E402
from openspeedy.components import WEIGHT_FOLDERS, load_component  # noqa: E402
from openspeedy.server import ServerOptions, TritonServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/i2vgen_xl_full_random"))
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("numpy", np.__version__, "torch", torch.__version__, flush=True)
    if not (args.checkpoint / "model_index.json").exists():
        with torch.device(DEVICE):
            build_checkpoint(args.checkpoint, FULL_SIZE, dtype=torch.float16)

    request = video_request(args.steps)
    options = dict(num_frames=request.num_frames, height=request.height, width=request.width,
                   num_inference_steps=request.num_inference_steps, seed=request.seed, decode_chunk_size=0)
    repository = build_repository(args.checkpoint, Path("/tmp/gpu_repository"),
                                  ExportOptions(device="gpu", dtype="float16"))
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, numpy=np.__version__,
                   note="full-size architecture, RANDOM fp16 weights, eager PyTorch UNet; 16 frames 512x512",
                   steps=args.steps)
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
    finally:
        server.stop()
    components = {name: load_component(name, args.checkpoint, DEVICE, "float16") for name in WEIGHT_FOLDERS}
    seconds, _, in_process, _ = run_openspeedy(args.checkpoint, components, request, repeats=args.requests)
    results["in_process_s"] = seconds
    results["overhead"] = results["served_s"] / seconds - 1
    results["served_equals_in_process"] = bool(np.array_equal(served, in_process))
    results["max_abs_uint8_served_vs_in_process"] = float(np.abs(served.astype(int) - in_process.astype(int)).max())
    (args.out / "gpu_serving.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
