"""Whole videos on one GPU, full-size I2VGen-XL architecture with RANDOM weights, every pipeline in one
process on the same weights, seed and noise, 50 steps:

- the peers (``--peers``, bench.common.reference_pipeline): ``diffusers``, diffusers' I2VGenXLPipeline,
  eager (SDPA), the reference; ``diffusers-compile``, the same with ``pipe.unet.fuse_qkv_projections();
  pipe.unet = torch.compile(pipe.unet)``, what a user who wants speed writes; ``diffusers-tuned``, what
  diffusers' speed guide gives where it applies (its Inductor settings, max-autotune with full graphs for
  the UNet and the VAE decode, the VAE channels-last);
- ``openspeedy-<variant>``: OpenSpeedy's pipeline with each set of UNet options, by its spelling
  (openspeedy/unet/options.py; ``--variants`` separates spellings with ``;``, as one holds commas), the
  UNet's recipe report (what each technique did at load) in the row. A variant of the lossy ``fp8``
  preset is also compared with the ``fast`` variant of the same edits (``fp8,-cuda_graphs`` with
  ``fast,-cuda_graphs``) where that ran before it: speed-up, and the video's relative L2 and PSNR;
- ``openspeedy-<variant>+<mode>``: with an opt-in approximation of the request contract (feature reuse,
  guidance interval), reported with its error against OpenSpeedy's exact video.

Each row: seconds per video, speed-up against each peer, relative L2 of the video (and final latents)
against the eager reference, peak device memory, the compile time (``compile_s``: the first warm-up call's
seconds beyond a second, warm one; a 2-step video at the same size warms each pipeline up) and the
seconds to load and warm up. ``--compile-cache-dir`` puts Inductor's and Triton's on-disk caches there:
a second run with the same directory measures the compile warm (the file count found there is recorded).

Usage: python -m bench.end_to_end --out DIR [--sizes 16x512x512,...] [--peers diffusers,diffusers-tuned]
       [--variants "fast;fp8"] [--modes reuse3,...] [--compile-cache-dir /tmp/openspeedy-compile-cache]
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
    PEERS,
    Measured,
    Results,
    count_files,
    difference,
    ensure_checkpoint,
    psnr_db,
    run_openspeedy,
    run_reference,
    synchronize,
    unet_variants,
    video_request,
)
from openspeedy.compilation import use_compile_cache
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet.fp8 import unet_dtype
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


def record(results: Results, row: dict, reference: dict, name: str, started: float, run: Measured,
           **extra) -> None:
    """One pipeline's measurement, with its speed-up against each peer and its error against eager."""
    measured = dict(pipeline=name, seconds=run.seconds, peak_bytes=run.peak_bytes, compile_s=run.compile_s,
                    load_and_warmup_s=time.perf_counter() - started - run.seconds, **extra)
    for peer in PEERS:
        if peer in reference:
            measured[f"speedup_vs_{peer}"] = reference[peer].seconds / run.seconds
    if "diffusers" in reference:
        measured |= difference(run.video, reference["diffusers"].video, run.latents, reference["diffusers"].latents)
    row["pipelines"].append(measured)
    results.save()
    print(row["frames"], row["height"], row["width"], measured, flush=True)


def fast_counterpart(variant: str) -> str | None:
    """The ``fast`` spelling with the same edits as a variant of the fp8 preset (``fp8,-cuda_graphs``:
    ``fast,-cuda_graphs``), which its video is compared with; None for other variants."""
    preset, _, edits = variant.partition(",")
    return None if preset != "fp8" else ",".join(filter(None, ("fast", edits)))


def against_fast(run: Measured, fast: Measured) -> dict:
    """A lossy variant's speed-up over ``fast`` and its video's error against fast's."""
    error = difference(run.video, fast.video, run.latents, fast.latents)
    return dict(speedup_vs_fast=fast.seconds / run.seconds, relative_l2_vs_fast=error["relative_l2"],
                latents_relative_l2_vs_fast=error["latents_relative_l2"],
                psnr_db_vs_fast=psnr_db(run.video, fast.video))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", default=SIZES, help="FRAMESxHEIGHTxWIDTH,...")
    parser.add_argument("--peers", default="diffusers,diffusers-compile", help=f"of {', '.join(PEERS)}")
    parser.add_argument("--compile-cache-dir", type=Path, default=None,
                        help="Inductor's and Triton's on-disk caches here (a second run compiles warm)")
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
    peers = [peer for peer in args.peers.split(",") if peer]
    if unknown := [peer for peer in peers if peer not in PEERS]:
        parser.error(f"--peers: unknown {', '.join(unknown)}; the peers are {', '.join(PEERS)}")
    cache_files_before = count_files(args.compile_cache_dir)
    if args.compile_cache_dir is not None:  # before anything compiles: torch reads the variables once
        use_compile_cache({"compile_cache_dir": str(args.compile_cache_dir)})
    dtype = ensure_checkpoint(args.checkpoint, args.smoke)
    dtype_name = str(dtype).removeprefix("torch.")
    variants = unet_variants(args.variants)
    modes = [name for name in args.modes.split(",") if name]
    results = Results(args.out / "end_to_end.json", steps=args.steps,
                      variants={name: options.as_parameters() for name, options in variants.items()},
                      modes={n: MODE_NOTES[n] for n in modes}, vae_decoder_compile_mode=args.vae_decoder_compile_mode,
                      vae_encoder_compile_mode=args.vae_encoder_compile_mode, peers=peers,
                      compile_cache_dir=str(args.compile_cache_dir or ""),
                      compile_cache_files_before=cache_files_before, sizes=[])
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

        for peer in peers:
            started = time.perf_counter()
            run = run_reference(args.checkpoint, dtype, request, 1, warmup, peer=peer)
            record(results, row, reference, peer, started, run)
            reference[peer] = run
            torch.cuda.empty_cache() if DEVICE.type == "cuda" else None

        exact = {}  # each variant's run, for the fp8 rows' comparison with fast
        for variant, options in variants.items():
            started = time.perf_counter()
            unet = load_component("unet", args.checkpoint, DEVICE, unet_dtype(options, dtype_name),
                                  options.as_parameters())
            components = others | {"unet": unet}
            exact[variant] = run_openspeedy(args.checkpoint, components, request, 1, warmup)
            fast = exact.get(fast_counterpart(variant))
            record(results, row, reference, f"openspeedy-{variant}", started, exact[variant],
                   recipe=unet.recipe_report, **(against_fast(exact[variant], fast) if fast else {}))
            if variant != list(variants)[-1]:
                del unet, components
                torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
                continue
            for mode in modes:
                synchronize()
                started = time.perf_counter()
                approximate = video_request(args.steps, frames, height, width, **MODES[mode])
                run = run_openspeedy(args.checkpoint, components, approximate, 1,
                                     video_request(6, frames, height, width, **MODES[mode]))
                error = difference(run.video, exact[variant].video, run.latents, exact[variant].latents)
                record(results, row, reference, f"openspeedy-{variant}+{mode}", started, run,
                       relative_l2_vs_exact=error["relative_l2"],
                       latents_relative_l2_vs_exact=error["latents_relative_l2"])


if __name__ == "__main__":
    main()
