"""The PyTorch UNet runtime's variants on the GPU, full-size architecture with RANDOM fp16 weights:
eager, fused QKV, torch.compile (default, max-autotune-no-cudagraphs, reduce-overhead = CUDA graphs), FP8
linears; ms per CFG call at 16 frames 512x512, achieved TFLOP/s (FLOPs counted), error against eager;
then whole 50-step videos with the chosen variants next to diffusers' eager pipeline.

Usage: python bench/unet_speed.py --out DIR --variants eager,fused,compile,... --end-to-end compile,fp8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_bench import (  # noqa: E402
    DEVICE,
    count_unet_flops,
    difference,
    run_openspeedy,
    run_reference,
    timed,
    video_request,
)

from openspeedy.components import COMPONENT_CLASSES, load_component  # noqa: E402
from openspeedy.contracts import UNET  # noqa: E402
from openspeedy.example_inputs import example_inputs  # noqa: E402
from openspeedy.export.random_checkpoint import FULL_SIZE, build_checkpoint  # noqa: E402
from openspeedy.unet.variants import TORCH_VARIANTS as VARIANTS  # noqa: E402


def measure(checkpoint: Path, name: str, reference_out: torch.Tensor | None, inputs) -> tuple[dict, object]:
    started = time.perf_counter()
    unet = load_component("unet", checkpoint, DEVICE, "float16", VARIANTS[name])
    unet.infer(inputs)  # compiles, where the variant compiles
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - started
    seconds, peak, out = timed(lambda: unet.infer(inputs)["NOISE_PRED"], repeats=10, warmup=2)
    flops = count_unet_flops(unet, inputs)
    row = dict(variant=name, options=VARIANTS[name], ms=seconds * 1e3, tflops=flops / seconds / 1e12, flops=flops,
               load_and_first_call_s=first_call_s, peak_bytes=peak)
    if reference_out is not None:
        row["relative_error_vs_eager"] = float((out - reference_out).float().norm() / reference_out.float().norm())
    print(row, flush=True)
    return row, (unet, out)


def profile(unet, inputs) -> str:
    """Top CUDA kernels of three UNet calls: where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            unet.infer(inputs)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/i2vgen_xl_full_random"))
    parser.add_argument("--variants", default="eager,fused,compile")
    parser.add_argument("--end-to-end", default="", help="variants to run whole videos with, next to diffusers")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--profile", default="", help="variants to profile (top CUDA kernels) after timing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.checkpoint / "model_index.json").exists():
        with torch.device(DEVICE):
            build_checkpoint(args.checkpoint, FULL_SIZE, dtype=torch.float16)

    torch.manual_seed(0)
    eager = load_component("unet", args.checkpoint, DEVICE, "float16")
    inputs = example_inputs(UNET, eager.sizes(16, 512, 512), device=eager.device)
    inputs["TIMESTEP"] = torch.tensor([500], device=DEVICE)
    baseline = eager.infer(inputs)["NOISE_PRED"]
    del eager
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                   note="full-size I2VGen-XL UNet, RANDOM fp16 weights; one CFG call (batch 2), 16 frames 512x512",
                   variants=[], end_to_end=[])
    keep = {}
    wanted_e2e = [v for v in args.end_to_end.split(",") if v]
    for name in [v for v in args.variants.split(",") if v]:
        try:
            row, (unet, _) = measure(args.checkpoint, name, baseline, inputs)
            results["variants"].append(row)
            if name in args.profile.split(","):
                (args.out / f"profile_{name}.txt").write_text(profile(unet, inputs))
            if name in wanted_e2e:
                keep[name] = unet
            else:
                del unet
        except Exception as error:  # noqa: BLE001 - a failed variant is a result
            results["variants"].append(dict(variant=name, error=f"{type(error).__name__}: {error}"[:400]))
            print(results["variants"][-1], flush=True)
        torch.cuda.empty_cache()
        (args.out / "unet_speed.json").write_text(json.dumps(results, indent=2))

    if wanted_e2e:
        request = video_request(args.steps)
        components = {n: load_component(n, args.checkpoint, DEVICE, "float16")
                      for n in COMPONENT_CLASSES if n != "unet"}
        ref_s, ref_peak, theirs, their_latents = run_reference(args.checkpoint, torch.float16, request)
        results["reference"] = dict(seconds=ref_s, peak_bytes=ref_peak, steps=args.steps)
        print(results["reference"], flush=True)
        for name in wanted_e2e:
            if name not in keep:
                continue
            seconds, peak, ours, latents = run_openspeedy(args.checkpoint, components | {"unet": keep[name]}, request)
            row = dict(variant=name, seconds=seconds, peak_bytes=peak, speedup=ref_s / seconds,
                       **difference(ours, theirs, latents, their_latents))
            if name == "eager":
                eager_video, eager_latents = ours, latents
            elif "eager" in wanted_e2e:
                row["vs_openspeedy_eager"] = difference(ours, eager_video, latents, eager_latents)
            results["end_to_end"].append(row)
            print(row, flush=True)
            (args.out / "unet_speed.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
