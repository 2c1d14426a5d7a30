"""Whole videos on one GPU, full-size I2VGen-XL architecture with RANDOM weights, every pipeline in one
process on the same weights, seed and noise, 50 steps:

- ``diffusers``: diffusers' I2VGenXLPipeline, eager (SDPA): the reference;
- ``diffusers-compile``: the same with ``pipe.unet.fuse_qkv_projections(); pipe.unet = torch.compile(pipe.unet)``,
  what a user who wants speed writes: the peer to beat;
- ``openspeedy-<variant>``: OpenSpeedy's pipeline with each set of UNet options, by its spelling
  (openspeedy/unet/options.py; ``--variants`` separates spellings with ``;``, as one holds commas), the
  UNet's recipe report (what each technique did at load) in the row;
- ``openspeedy-<variant>+<mode>``: with an opt-in approximation of the request contract (feature reuse,
  guidance interval), reported with its error against OpenSpeedy's exact video.

Each row: seconds per video, speed-up against both diffusers rows, relative L2 of the video (and final
latents) against the eager reference, peak device memory, and the seconds to load and warm up (for the
compiled rows, compilation). A 2-step video at the same size warms each pipeline up before the timed one.

Usage: python -m bench.end_to_end --out DIR [--sizes 16x512x512,...] [--variants "fast;compile"] [--modes reuse3,...]
       [--vae-decoder-compile-mode default] [--vae-encoder-compile-mode default]
Writes DIR/end_to_end.json after every measurement (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    DEVICE,
    Results,
    difference,
    ensure_checkpoint,
    run_openspeedy,
    run_reference,
    synchronize,
    unet_variants,
    video_request,
)
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet.options import PRESETS

SIZES = "16x512x512,24x768x768,32x512x512,16x704x1280"

# Opt-in approximations by name: the request inputs each one adds.
MODES = {
    "reuse2": {"FEATURE_REUSE_INTERVAL": np.array([2], np.int32)},
    "reuse3": {"FEATURE_REUSE_INTERVAL": np.array([3], np.int32)},
    "reuse4": {"FEATURE_REUSE_INTERVAL": np.array([4], np.int32)},
    "interval": {"GUIDANCE_INTERVAL": np.array([0.0, 0.6], np.float32)},
    "reuse3+interval": {"FEATURE_REUSE_INTERVAL": np.array([3], np.int32),
                        "GUIDANCE_INTERVAL": np.array([0.0, 0.6], np.float32)},
}
MODE_NOTES = {name: {key: value.tolist() for key, value in inputs.items()} for name, inputs in MODES.items()}


def record(results: Results, row: dict, reference: dict, name: str, started: float, seconds: float, peak: int,
           video, latents, **extra) -> None:
    """One pipeline's measurement, with its speed-up against the diffusers rows and its error against eager."""
    measured = dict(pipeline=name, seconds=seconds, peak_bytes=peak,
                    load_and_warmup_s=time.perf_counter() - started - seconds, **extra)
    for peer in ("diffusers", "diffusers-compile"):
        if peer in reference:
            measured[f"speedup_vs_{peer}"] = reference[peer]["seconds"] / seconds
    if "diffusers" in reference:
        measured |= difference(video, reference["diffusers"]["video"], latents, reference["diffusers"]["latents"])
    row["pipelines"].append(measured)
    results.save()
    print(row["frames"], row["height"], row["width"], measured, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", default=SIZES, help="FRAMESxHEIGHTxWIDTH,...")
    parser.add_argument("--peers", default="diffusers,diffusers-compile")
    parser.add_argument("--variants", default="fast",
                        help=f"UNet option spellings separated by ';', each a preset ({', '.join(PRESETS)}) and edits")
    parser.add_argument("--modes", default="", help=f"opt-in approximations on the last variant, of {', '.join(MODES)}")
    parser.add_argument("--vae-decoder-compile-mode", default="", choices=("", "default"),
                        help="OpenSpeedy's decoder compiled (its vae_decoder config parameter compile_mode)")
    parser.add_argument("--vae-encoder-compile-mode", default="", choices=("", "default"),
                        help="OpenSpeedy's VAE encoder compiled (its vae_encoder config parameter compile_mode)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    dtype = ensure_checkpoint(args.checkpoint, args.smoke)
    dtype_name = str(dtype).removeprefix("torch.")
    variants = unet_variants(args.variants)
    modes = [name for name in args.modes.split(",") if name]
    results = Results(args.out / "end_to_end.json", steps=args.steps,
                      variants={name: options.as_parameters() for name, options in variants.items()},
                      modes={n: MODE_NOTES[n] for n in modes}, vae_decoder_compile_mode=args.vae_decoder_compile_mode,
                      vae_encoder_compile_mode=args.vae_encoder_compile_mode, sizes=[])
    vae_options = {"vae_decoder": {"compile_mode": args.vae_decoder_compile_mode},
                   "vae_encoder": {"compile_mode": args.vae_encoder_compile_mode}}
    others = {name: load_component(name, args.checkpoint, DEVICE, dtype_name, vae_options.get(name))
              for name in COMPONENT_CLASSES if name != "unet"}

    for frames, height, width in parse_shapes(args.sizes):
        request = video_request(args.steps, frames, height, width)
        warmup = video_request(2, frames, height, width)
        row = dict(frames=frames, height=height, width=width, pipelines=[])
        results["sizes"].append(row)
        reference = {}

        for peer in filter(None, args.peers.split(",")):
            started = time.perf_counter()
            seconds, peak, video, latents = run_reference(args.checkpoint, dtype, request, 1, warmup,
                                                          compiled=peer == "diffusers-compile")
            record(results, row, reference, peer, started, seconds, peak, video, latents)
            reference[peer] = dict(seconds=seconds, video=video, latents=latents)
            torch.cuda.empty_cache() if DEVICE.type == "cuda" else None

        for variant, options in variants.items():
            started = time.perf_counter()
            unet = load_component("unet", args.checkpoint, DEVICE, dtype_name, options.as_parameters())
            components = others | {"unet": unet}
            seconds, peak, exact, exact_latents = run_openspeedy(args.checkpoint, components, request, 1, warmup)
            record(results, row, reference, f"openspeedy-{variant}", started, seconds, peak, exact, exact_latents,
                   recipe=unet.recipe_report)
            if variant != list(variants)[-1]:
                del unet, components
                torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
                continue
            for mode in modes:
                synchronize()
                started = time.perf_counter()
                fast = video_request(args.steps, frames, height, width, **MODES[mode])
                seconds, peak, video, latents = run_openspeedy(
                    args.checkpoint, components, fast, 1, video_request(6, frames, height, width, **MODES[mode]))
                error = difference(video, exact, latents, exact_latents)
                record(results, row, reference, f"openspeedy-{variant}+{mode}", started, seconds, peak, video, latents,
                       relative_l2_vs_exact=error["relative_l2"],
                       latents_relative_l2_vs_exact=error["latents_relative_l2"])


if __name__ == "__main__":
    main()
