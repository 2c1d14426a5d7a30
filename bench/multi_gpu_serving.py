"""Per-GPU placement on a machine of several GPUs: a repository exported with per_gpu_components, its
orchestrators on every GPU, concurrent clients. Checks that every request succeeds, that each GPU's
component copies served requests, and that a seed gives the same video whichever GPU made it.

Tiny architecture (the routing is what is tested, not speed). Runs under bench/gpu_serving.sh's
environment: MODULE=bench.multi_gpu_serving bash bench/gpu_serving.sh OUT
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.common import model_statistics
from openspeedy import contracts
from openspeedy.client.api import Client
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.server import ServerOptions, TritonServer

EXAMPLE = Path(__file__).resolve().parents[1] / "openspeedy" / "client" / "example.png"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = tuple(range(torch.cuda.device_count()))
    checkpoint = build_tiny_checkpoint(Path("/tmp/multi_gpu_tiny_checkpoint"))
    options = ExportOptions(device="gpu", gpus=gpus, dtype="float16", per_gpu_components=True, settings=TINY_SETTINGS)
    repository = build_repository(checkpoint, Path("/tmp/multi_gpu_repository"), options)
    server = TritonServer(ServerOptions(repository), log_path=args.out / "triton_multi_gpu.log")
    server.start(timeout=400)
    results = dict(gpus=[torch.cuda.get_device_name(g) for g in gpus])
    try:
        image = EXAMPLE.read_bytes()

        def generate(seed: int) -> np.ndarray:
            with Client(server.grpc_url, timeout_s=300) as client:
                return client.generate(image, "a lighthouse", seed=seed, num_frames=8, height=64, width=64,
                                       num_inference_steps=10).frames

        seeds = [index % 4 for index in range(args.requests)]  # each seed several times, on whichever GPU
        with ThreadPoolExecutor(max_workers=2 * len(gpus)) as pool:
            videos = list(pool.map(generate, seeds))
        results["requests"] = len(videos)
        results["same_seed_same_video"] = all(
            np.array_equal(video, videos[seeds.index(seed)]) for seed, video in zip(seeds, videos))
        with Client(server.grpc_url) as client:
            results["requests_per_model"] = {
                name: stats["requests"] for name, stats in model_statistics(client._client).items()}
    finally:
        server.stop()
    per_gpu = results["requests_per_model"]
    results["every_gpu_served"] = all(
        per_gpu.get(contracts.gpu_model_name(c.name, g), 0) > 0 for c in contracts.COMPONENTS for g in gpus)
    (args.out / "multi_gpu_serving.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
