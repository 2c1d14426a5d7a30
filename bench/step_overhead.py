"""What one denoising step costs through Triton beyond the same step in process: the orchestrator's BLS
call to the unet (IPC to the server and to the unet's process and back), the step metric and the
cancellation check.

Times videos of two step counts served (gRPC) and in process; the difference between the two counts
cancels the fixed costs (image decoding, encoders, VAE decoding, video transfer), leaving seconds per
step on each side. Tiny model by default (runs on a CPU); any repository with --checkpoint/--device.

Usage: python -m bench.step_overhead --out DIR [--steps 10,60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.common import client_options, run_openspeedy, video_request
from openspeedy.client.api import Client
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
from openspeedy.server import ServerOptions, TritonServer

SIZE = (8, 64, 64)


def per_step(times: dict[int, float]) -> float:
    (few, few_s), (many, many_s) = sorted(times.items())
    return (many_s - few_s) / (many - few)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", default="10,60", help="two step counts")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    work = Path("build/step_overhead")
    checkpoint = build_tiny_checkpoint(work / "checkpoint")
    repository = build_repository(checkpoint, work / "models", ExportOptions(settings=TINY_SETTINGS))

    requests = {n: video_request(n, *SIZE) for n in steps}
    components = {name: load_component(name, checkpoint) for name in COMPONENT_CLASSES}
    in_process = {n: run_openspeedy(checkpoint, components, requests[n], repeats=args.repeats)[0] for n in steps}

    served = {}
    with TritonServer(ServerOptions(repository), log_path=work / "triton.log") as server:
        with Client(server.grpc_url, timeout_s=600) as client:
            for n, request in requests.items():
                options = client_options(request)
                times = []
                for _ in range(args.repeats + 1):  # the first warms up
                    started = time.perf_counter()
                    client.generate(request.image_bytes, request.prompt, **options)
                    times.append(time.perf_counter() - started)
                served[n] = statistics.median(times[1:])

    results = dict(
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (CPU)",
        torch=torch.__version__, model="tiny, float32", size="x".join(map(str, SIZE)), steps=steps,
        in_process_s=in_process, served_s=served,
        in_process_step_ms=per_step(in_process) * 1e3, served_step_ms=per_step(served) * 1e3,
    )
    results["overhead_per_step_ms"] = results["served_step_ms"] - results["in_process_step_ms"]
    (args.out / "step_overhead.json").write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
