"""The VAE decoder eager against torch.compile, at a video size and a few chunk sizes: full-size
I2VGen-XL VAE with RANDOM fp16 weights. Each row: ms to decode all frames to uint8 (chunk after chunk,
what openspeedy.decoding runs), peak memory above the weights, compile seconds, and the relative L2 of
the frames against eager.

Usage: python -m bench.diagnostics.vae_decode_probe --out DIR [--size 16x512x512] [--chunks 16,8] [--smoke]
Writes DIR/vae_decode_probe.json after every measurement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from bench.common import DEFAULT_CHECKPOINT, DEVICE, Results, ensure_checkpoint, relative_l2, synchronize, timed
from openspeedy.decoding import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    DEFAULT_TILE_ABOVE_PIXELS,
    ChunkedDecoder,
    frames_to_uint8,
)
from openspeedy.model_parameters import parse_shapes


def decode_all(decode, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([frames_to_uint8(decode(latents[i:i + chunk])) for i in range(0, latents.shape[0], chunk)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH of the video")
    parser.add_argument("--chunks", default="16,8", help="frames per decoder call")
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    (frames, height, width), = parse_shapes(args.size)
    chunks = [int(c) for c in args.chunks.split(",")]
    dtype = ensure_checkpoint(args.checkpoint, args.smoke)
    vae = AutoencoderKL.from_pretrained(args.checkpoint / "vae", dtype=dtype).to(DEVICE).eval()
    torch.manual_seed(0)
    latents = torch.randn(frames, 4, height // 8, width // 8, device=DEVICE, dtype=dtype)
    results = Results(args.out / "vae_decode_probe.json", size=args.size)

    # The decoder's own per-chunk call, eager and compiled, without its memory plan and host copies.
    decoders = {name: ChunkedDecoder(vae, DEVICE, dtype, DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TILE_ABOVE_PIXELS,
                                     compile_mode=mode).decode_chunk
                for name, mode in (("eager", ""), ("compiled", "default"))}
    reference = {}
    with torch.inference_mode():
        for name, decode in decoders.items():
            for chunk in chunks:
                synchronize()
                started = time.perf_counter()
                decode_all(decode, latents, chunk)
                synchronize()
                first_s = time.perf_counter() - started
                seconds, peak, video = timed(lambda decode=decode, chunk=chunk: decode_all(decode, latents, chunk),
                                             repeats=5, warmup=1)
                row = dict(decoder=name, chunk=chunk, ms=seconds * 1e3, peak_bytes=peak, first_call_s=first_s)
                if chunk in reference:
                    row["relative_l2_vs_eager"] = relative_l2(video, reference[chunk])
                    row["max_abs_uint8_vs_eager"] = int((video.int() - reference[chunk].int()).abs().max())
                else:
                    reference[chunk] = video
                results.append("decodes", row)


if __name__ == "__main__":
    main()
