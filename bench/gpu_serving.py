"""Served (Triton, KIND_GPU) against in-process time on the GPU, full-size architecture with RANDOM fp16
weights: the same pipeline code, the same request, through tritonserver's gRPC endpoint and in process.

Runs on the GPU machine under a Python whose numpy is 1.x: the nvidia-pytriton 0.7.0 python backend
stub reads NumPy 2 arrays wrongly (every element as the first one). Its pybind11 interop predates
NumPy 2, whose array descriptor layout changed, so the stub must import numpy 1.26 (see
bench/gpu_serving.sh, which builds such an environment from carried wheels).

Also records Triton's per-model statistics and the orchestrator's mean step over the timed requests,
and the in-process time with a synchronization after every UNet call (what a call through Triton
imposes), with that UNet's CPU and GPU time per call. --unet-timings serves the unet
through bench/diagnostics/timed_unet_model.py, which records the same from inside its stub and profiles
three calls on both sides; --in-process-after measures in process again once the server has stopped (the GPU's drift).

Usage: python -m bench.gpu_serving --out DIR [--requests 3] [--steps 50] [--size 16x512x512] [--unet-options SPELLING]
       [--unet-timings] [--in-process-after] [--served-only] [--stream] [--compile-cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    DEVICE,
    STAT_PARTS,
    client_options,
    device_description,
    ensure_checkpoint,
    model_statistics,
    run_openspeedy,
    statistics_counters,
    video_request,
)
from bench.diagnostics import call_profiler
from bench.diagnostics.call_profiler import PROFILED_CALLS, CallProfiler
from openspeedy.client.api import Client
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.export.repository import ExportOptions, build_repository, model_configs
from openspeedy.model_parameters import parse_shapes
from openspeedy.server import ServerOptions, TritonServer
from openspeedy.unet.options import parse


def step_histogram(metrics_url: str) -> tuple[float, float]:
    """Sum and count of the orchestrator's denoising-step histogram (UNet BLS call + scheduler step)."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    values = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for suffix in values:
            if line.startswith("openspeedy_denoising_step_seconds" + suffix):
                values[suffix] += float(line.rsplit(" ", 1)[1])
    return values["_sum"], values["_count"]


class SynchronizedUNet:
    """The UNet component, synchronizing after every call as a call through Triton does (the stub waits
    for the output before it answers): the in-process cost of losing CPU/GPU overlap between steps.
    Records what bench/diagnostics/timed_unet_model.py records in the served unet's stub, to set side by side:
    the forward's CPU side, and the GPU's time from the call's entry to its last kernel. The calls
    that the served stub profiles are profiled here too."""

    def __init__(self, unet):
        self.unet, self.contract = unet, unet.contract
        self.timings: list[dict] = []
        self.profiler = CallProfiler(PROFILED_CALLS)

    def infer(self, inputs):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        started = time.perf_counter()
        start.record()
        outputs = self.profiler(self.unet.infer, inputs)
        forward = time.perf_counter()
        end.record()
        torch.cuda.synchronize()
        self.timings.append(dict(cpu_forward_ms=(forward - started) * 1e3, gpu_execute_ms=start.elapsed_time(end),
                                 call_ms=(time.perf_counter() - started) * 1e3))
        return outputs


# The in-process part's results survive here for a later --served-only call on the same machine: a cold
# torch.compile in process and then in the server's stub may not fit one 10-minute device command.
IN_PROCESS_STATE = Path("/tmp/gpu_serving_in_process.npz")
# A Triton adapter, not importable outside a stub: copied, never imported here.
TIMED_UNET_MODEL = Path(call_profiler.__file__).with_name("timed_unet_model.py")
UNET_TIMINGS = Path("/tmp/unet_timings.jsonl")  # written by bench/diagnostics/timed_unet_model.py in the unet's stub


def measure_in_process(args, export: ExportOptions, request, suffix: str = "") -> tuple[dict, np.ndarray]:
    """Seconds per video in process, plainly and synchronized per UNet call; the last video's frames.
    Result keys end in ``suffix`` (the run after serving)."""
    components = {name: load_component(name, args.checkpoint, DEVICE, "float16", model_config_parameters(export, name))
                  for name in COMPONENT_CLASSES}
    results = {}
    measured = run_openspeedy(args.checkpoint, components, request, repeats=args.requests)
    results["in_process_s" + suffix], frames = measured.seconds, measured.video
    unet = SynchronizedUNet(components["unet"])
    results["in_process_synchronized_per_step_s" + suffix], *_ = run_openspeedy(
        args.checkpoint, components | {"unet": unet}, request, repeats=args.requests)
    results["in_process_unet_median_ms" + suffix] = medians(unet.timings[args.steps:])  # past the first video
    (args.out / f"in_process_unet_profile{suffix}.txt").write_text(unet.profiler.report())
    del components, unet
    torch.cuda.empty_cache()
    return results, frames


def measure_served(args, export: ExportOptions, request) -> tuple[dict, np.ndarray]:
    """Seconds per video through tritonserver's gRPC endpoint (KIND_GPU), after one warm-up request, and
    where the time goes: Triton's per-model statistics and the orchestrator's step histogram, counted
    over the timed requests only."""
    repository = build_repository(args.checkpoint, Path("/tmp/gpu_repository"), export)
    if args.unet_timings:
        use_timed_unet(repository, UNET_TIMINGS)
    options = client_options(request)
    server = TritonServer(ServerOptions(repository), log_path=args.out / "triton.log")
    started = time.perf_counter()
    server.start(timeout=900)
    results = {"server_start_s": time.perf_counter() - started}
    try:
        with Client(server.grpc_url, timeout_s=600) as client:
            def generate() -> np.ndarray:
                return client.generate(request.image_bytes, request.prompt, **options).frames

            started = time.perf_counter()
            generate()
            results["served_warmup_request_s"] = time.perf_counter() - started
            counters, (step_sum, step_count) = statistics_counters(client._client), step_histogram(server.metrics_url)
            served_times, frames = [], None
            for _ in range(args.requests):
                started = time.perf_counter()
                frames = generate()
                served_times.append(time.perf_counter() - started)
            results["served_s"] = statistics.median(served_times)
            results["served_all_s"] = served_times
            results["triton_models"] = model_statistics(client._client, since=counters)
            if args.stream:
                # The decoupled stream model: the same pipeline, with a progress response per step.
                client.generate_stream(request.image_bytes, request.prompt, **options)  # its own first request
                stream_times = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    client.generate_stream(request.image_bytes, request.prompt, **options)
                    stream_times.append(time.perf_counter() - started)
                results["served_stream_s"] = statistics.median(stream_times)
                results["served_stream_all_s"] = stream_times
        step_sum_after, step_count_after = step_histogram(server.metrics_url)
        results["served_denoising_step_s"] = (step_sum_after - step_sum) / max(step_count_after - step_count, 1)
    finally:
        server.stop()
    unet = results["triton_models"].get("unet", {})
    results["served_unet_call_ms"] = sum(unet.get(f"{part}_ms", 0.0) for part in STAT_PARTS)
    if args.unet_timings:
        results["served_unet_stub_median_ms"] = medians(read_unet_timings(UNET_TIMINGS)[-args.requests * args.steps:])
        shutil.copyfile(f"{UNET_TIMINGS}.prof.txt", args.out / "served_unet_profile.txt")
    return results, frames


def use_timed_unet(repository: Path, timings: Path) -> None:
    """Serves the repository's unet through bench/diagnostics/timed_unet_model.py, which writes to ``timings`` (and
    ``timings``.prof.txt). Start the server after this: its stubs inherit the variable naming the file."""
    version = repository / "unet" / "1"
    # The stub imports model.py by its path; call_profiler.py beside it is found because Triton's python
    # backend puts the version folder on sys.path (bench itself is not installed where the stub runs).
    shutil.copyfile(TIMED_UNET_MODEL, version / "model.py")
    shutil.copyfile(call_profiler.__file__, version / "call_profiler.py")
    timings.unlink(missing_ok=True)
    os.environ["OPENSPEEDY_UNET_TIMINGS"] = str(timings)


def read_unet_timings(timings: Path) -> list[dict]:
    return [json.loads(line) for line in timings.read_text().splitlines()]


def medians(rows: list[dict]) -> dict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH of the video")
    parser.add_argument("--unet-options", default="eager",
                        help="the UNet's options, served and in process: eager, fast, fast,-cuda_graphs... "
                             "(openspeedy/unet/options.py)")
    parser.add_argument("--vae-decoder-compile-mode", default="", choices=("", "default"),
                        help="torch.compile the VAE decoder, served and in process")
    parser.add_argument("--served-only", action="store_true",
                        help=f"take the in-process results from an earlier run's {IN_PROCESS_STATE}")
    parser.add_argument("--in-process-after", action="store_true",
                        help="measure in process again after serving (the GPU's drift between the two)")
    parser.add_argument("--stream", action="store_true", help="also time the decoupled stream model")
    parser.add_argument("--compile-cache-dir", default="",
                        help="the unet's compile cache folder, in process and served: the server's start is "
                             "then a restart from the caches the in-process compile left there")
    parser.add_argument("--unet-timings", action="store_true",
                        help="serve the unet through bench/diagnostics/timed_unet_model.py: where its time goes "
                             "in the stub")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("numpy", np.__version__, "torch", torch.__version__, flush=True)
    ensure_checkpoint(args.checkpoint, smoke=False)

    ((frames, height, width),) = parse_shapes(args.size)
    request = video_request(args.steps, frames, height, width)
    size = f"{request.num_frames}x{request.height}x{request.width}"
    unet_options = parse(args.unet_options)
    compiles = unet_options.compile_mode or args.vae_decoder_compile_mode
    export = ExportOptions(device="gpu", dtype="float16", unet_options=unet_options,
                           vae_decoder_compile_mode=args.vae_decoder_compile_mode,
                           warmup_shapes=size if compiles else "", compile_cache_dir=args.compile_cache_dir)
    results = dict(device_description(
                       note=f"full-size architecture, RANDOM fp16 weights; {size}; UNet "
                            f"{args.unet_options}"),
                   numpy=np.__version__, steps=args.steps)

    def save() -> None:
        (args.out / "gpu_serving.json").write_text(json.dumps(results, indent=2))

    # In process first: a compiled UNet fills Inductor's cache (TORCHINDUCTOR_CACHE_DIR), which the
    # served UNet's warm-up then reads instead of compiling again.
    if args.served_only:
        state = np.load(IN_PROCESS_STATE)
        in_process_results, in_process = json.loads(str(state["results"])), state["frames"]
    else:
        in_process_results, in_process = measure_in_process(args, export, request)
        np.savez(IN_PROCESS_STATE, frames=in_process, results=json.dumps(in_process_results))
    results.update(in_process_results)
    save()
    served_results, served = measure_served(args, export, request)
    results.update(served_results)
    save()
    in_process_seconds = [results["in_process_s"]]
    if args.in_process_after:
        # In process again after serving: a GPU that ran warmer or slower later shows up here, not as
        # serving overhead. The overhead is then against the mean of the two in-process times.
        results.update(measure_in_process(args, export, request, suffix="_after_serving")[0])
        in_process_seconds.append(results["in_process_s_after_serving"])
    results["overhead"] = results["served_s"] / statistics.mean(in_process_seconds) - 1
    if "served_stream_s" in results:
        results["stream_overhead"] = results["served_stream_s"] / statistics.mean(in_process_seconds) - 1
    results["served_equals_in_process"] = bool(np.array_equal(served, in_process))
    results["max_abs_uint8_served_vs_in_process"] = float(np.abs(served.astype(int) - in_process.astype(int)).max())
    save()
    print(json.dumps(results, indent=2))


def model_config_parameters(export: ExportOptions, model: str) -> dict[str, str]:
    """A component model's config parameters for these export options: the same runtime in process."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(model_configs(export, 0.18125)[model], model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


if __name__ == "__main__":
    main()
