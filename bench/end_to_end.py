"""Whole videos at several sizes on one GPU, full-size I2VGen-XL architecture with RANDOM fp16 weights:
diffusers' eager I2VGenXLPipeline (SDPA) against OpenSpeedy's pipeline with each UNet runtime, same
weights, seed and settings, 50 steps.

For each size and pipeline: seconds per video, peak device memory, and the output difference against
the reference; for each UNet runtime: ms per CFG call at that size and the achieved TFLOP/s (FLOPs
counted by torch's FlopCounterMode on the eager UNet, not assumed). A 2-step video of the same size
warms each pipeline up (compilation, cuDNN's algorithm search) before the one timed video.

Usage: python bench/end_to_end.py --out DIR [--sizes 16x512x512,24x768x768] [--runtimes eager,compile]
Writes DIR/end_to_end.json after every measurement (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_bench import (  # noqa: E402
    DEVICE,
    _driver,
    count_unet_flops,
    difference,
    run_openspeedy,
    run_reference,
    timed,
    video_request,
)
from unet_speed import VARIANTS  # noqa: E402

from openspeedy.components import COMPONENT_CLASSES, load_component, parse_shapes  # noqa: E402
from openspeedy.contracts import UNET  # noqa: E402
from openspeedy.example_inputs import example_inputs  # noqa: E402
from openspeedy.export.random_checkpoint import FULL_SIZE, TINY, build_checkpoint  # noqa: E402

SIZES = "16x512x512,24x768x768,32x512x512,16x704x1280"


def unet_call(unet, frames: int, height: int, width: int, flops: int, repeats: int) -> dict:
    inputs = example_inputs(UNET, unet.sizes(frames, height, width), device=unet.device)
    inputs["TIMESTEP"] = torch.tensor([500], device=DEVICE)
    seconds, _, _ = timed(lambda: unet.infer(inputs), repeats=repeats, warmup=1)
    return dict(unet_ms=seconds * 1e3, unet_tflops=flops / seconds / 1e12)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/i2vgen_xl_full_random"))
    parser.add_argument("--sizes", default=SIZES, help="FRAMESxHEIGHTxWIDTH,...")
    parser.add_argument("--runtimes", default="eager,compile", help=f"UNet runtimes, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    architecture, dtype = (TINY, torch.float32) if args.smoke else (FULL_SIZE, torch.float16)
    if not (args.checkpoint / "model_index.json").exists():
        with torch.device(DEVICE):
            build_checkpoint(args.checkpoint, architecture, dtype=dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    runtimes = [name for name in args.runtimes.split(",") if name]
    results = dict(
        note="full-size I2VGen-XL architecture, RANDOM fp16 weights: real speed and memory, meaningless pictures",
        gpu=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke run)", driver=_driver(),
        torch=torch.__version__, date=datetime.date.today().isoformat(), steps=args.steps,
        runtimes={name: VARIANTS[name] for name in runtimes}, sizes=[],
    )

    def save() -> None:
        (args.out / "end_to_end.json").write_text(json.dumps(results, indent=2))

    others = {name: load_component(name, args.checkpoint, DEVICE, dtype_name)
              for name in COMPONENT_CLASSES if name != "unet"}
    for frames, height, width in parse_shapes(args.sizes):
        request = video_request(args.steps, frames, height, width)
        warmup = video_request(2, frames, height, width)
        row = dict(frames=frames, height=height, width=width, pipelines=[])
        results["sizes"].append(row)
        seconds, peak, reference, reference_latents = run_reference(args.checkpoint, dtype, request, 1, warmup)
        row["pipelines"].append(dict(pipeline="diffusers", seconds=seconds, peak_bytes=peak))
        print(frames, height, width, row["pipelines"][-1], flush=True)
        save()
        for name in runtimes:
            torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
            unet = load_component("unet", args.checkpoint, DEVICE, dtype_name, VARIANTS[name])
            if "flops" not in row:
                inputs = example_inputs(UNET, unet.sizes(frames, height, width), device=unet.device)
                row["flops"] = count_unet_flops(unet, inputs)
            started = time.perf_counter()
            seconds, peak, video, latents = run_openspeedy(args.checkpoint, others | {"unet": unet}, request, 1, warmup)
            measured = dict(pipeline=f"openspeedy-{name}", seconds=seconds, peak_bytes=peak,
                            speedup=row["pipelines"][0]["seconds"] / seconds,
                            warmup_and_run_s=time.perf_counter() - started,
                            **unet_call(unet, frames, height, width, row["flops"], 1 if args.smoke else 10),
                            **difference(video, reference, latents, reference_latents))
            row["pipelines"].append(measured)
            print(frames, height, width, measured, flush=True)
            del unet
            save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
