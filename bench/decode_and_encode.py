"""What the GPU spends outside the denoising loop, full-size I2VGen-XL architecture with RANDOM fp16
weights (speed and memory are real; the pictures are not). One process, one GPU:

1. chunked VAE decoding: time and peak memory for 16x512x512, 24x768x768, 32x512x512 at
   each chunk size, at automatic and all at once;
2. the image-only work a latent-cache hit skips: CLIP image embedding + VAE encoding.

UNet calls are measured by bench/unet_calls.py, whole videos against diffusers by bench/end_to_end.py.

Usage: python -m bench.decode_and_encode --out DIR [--quick]. Writes DIR/decode_and_encode.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import DEFAULT_CHECKPOINT, DEVICE, Results, ensure_checkpoint, timed
from openspeedy.components import COMPONENT_CLASSES, load_component


def bench_decode(decoder, quick: bool) -> list[dict]:
    rows = []
    cases = [(16, 512, 512), (24, 768, 768), (32, 512, 512)]
    for frames, height, width in cases[:1] if quick else cases:
        latents = torch.randn(frames, 4, height // 8, width // 8, device=DEVICE, dtype=torch.float16)
        decoder.vae.use_tiling = False
        cost = decoder.cost(tuple(latents.shape))
        auto = decoder.automatic_chunk(tuple(latents.shape))
        for chunk in sorted({1, 2, 4, 8, 16, frames}) + [0]:
            if chunk > frames:
                continue
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
            try:
                seconds, peak, _ = timed(lambda: decoder.decode(latents, chunk))  # noqa: B023 - timed calls it now
                rows.append(dict(frames=frames, height=height, width=width, chunk=chunk or f"auto={auto}",
                                 seconds=seconds, peak_bytes=peak))
            except Exception as error:  # noqa: BLE001 - an out-of-memory is a result here
                rows.append(dict(frames=frames, height=height, width=width, chunk=chunk, error=str(error)[:200]))
            print(rows[-1], flush=True)
        rows.append(dict(frames=frames, height=height, width=width, measured_cost=dict(fixed=cost.fixed,
                         per_frame=cost.per_frame), budget=decoder.memory_budget_bytes, auto_chunk=auto))
    return rows


def bench_image_work(components, height: int, width: int) -> dict:
    square = torch.randint(0, 256, (1, width, width, 3), dtype=torch.uint8)
    target = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8)
    clip, _, _ = timed(lambda: components["image_encoder"].infer({"IMAGE": square}), repeats=5)
    vae, _, _ = timed(lambda: components["vae_encoder"].infer({"IMAGE": target}), repeats=5)
    return dict(height=height, width=width, image_encoder_s=clip, vae_encoder_s=vae, saved_per_hit_s=clip + vae)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--quick", action="store_true", help="one decode case")
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()

    started = time.time()
    dtype = ensure_checkpoint(args.checkpoint, args.smoke)
    print(f"checkpoint ready in {time.time() - started:.0f} s", flush=True)
    dtype_name = str(dtype).removeprefix("torch.")
    components = {name: load_component(name, args.checkpoint, DEVICE, dtype_name)
                  for name in COMPONENT_CLASSES if name != "unet"}

    results = Results(args.out / "decode_and_encode.json")
    results["vae_decode"] = bench_decode(components["vae_decoder"].decoder, args.quick)
    results["image_work"] = [bench_image_work(components, 512, 512), bench_image_work(components, 704, 1280)]
    print(results["image_work"], flush=True)


if __name__ == "__main__":
    main()
