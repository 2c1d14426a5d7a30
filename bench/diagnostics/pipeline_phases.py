"""Where a whole video's time goes, OpenSpeedy's pipeline in process on the GPU (full-size I2VGen-XL
architecture, RANDOM fp16 weights): the video timed as the benchmark times it, then once more with every
model call timed on its own (synchronised before and after), what is left being the loop's own work
(scheduler, guidance, input assembly); then the decode at each chunk size with its peak memory, next to
the chunk the automatic plan picks and the peak its cost model predicts.

Usage: python -m bench.diagnostics.pipeline_phases --out DIR [--variant fast] [--size 16x512x512]
       [--chunks 16,8] [--vae-decoder-compile-mode default] [--smoke]
Writes DIR/pipeline_phases.json after every measurement.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from bench.common import (
    DEFAULT_CHECKPOINT,
    DEVICE,
    Results,
    ensure_checkpoint,
    openspeedy_pipeline,
    synchronize,
    timed,
    video_request,
)
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.decoding import ChunkedDecoder
from openspeedy.local_models import LocalModels
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet.options import PRESETS, parse


class TimedModels(LocalModels):
    """Model calls in process, each one's seconds added up per model (the device synchronised around it)."""

    def __init__(self, components):
        super().__init__(components)
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, contract, inputs):
        synchronize()
        started = time.perf_counter()
        outputs = super().__call__(contract, inputs)
        synchronize()
        self.seconds[contract.name] += time.perf_counter() - started
        return outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--variant", default="fast",
                        help=f"UNet options: a preset ({', '.join(PRESETS)}) and edits (openspeedy/unet/options.py)")
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH of the video")
    parser.add_argument("--chunks", default="16,8", help="decode chunk sizes to time besides the automatic one")
    parser.add_argument("--vae-decoder-compile-mode", default="default", choices=("", "default"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    (frames, height, width), = parse_shapes(args.size)
    dtype = ensure_checkpoint(args.checkpoint, args.smoke)
    dtype_name = str(dtype).removeprefix("torch.")
    unet_options = parse(args.variant).as_parameters()
    results = Results(args.out / "pipeline_phases.json", size=args.size, steps=args.steps, variant=args.variant,
                      unet_options=unet_options, vae_decoder_compile_mode=args.vae_decoder_compile_mode)

    started = time.perf_counter()
    components = {
        name: load_component(name, args.checkpoint, DEVICE, dtype_name,
                             unet_options if name == "unet"
                             else {"compile_mode": args.vae_decoder_compile_mode} if name == "vae_decoder" else None)
        for name in COMPONENT_CLASSES
    }
    request = video_request(args.steps, frames, height, width)
    pipeline = openspeedy_pipeline(args.checkpoint, components)

    def video():
        latents = pipeline.denoise(request)
        return pipeline.decode(latents, request.decode_chunk_size), latents

    pipeline.denoise(video_request(2, frames, height, width))  # compiles and captures the UNet's shape
    video()  # and the decoder's: its cost probes and the chunk the plan picks
    results["load_and_warmup_s"] = time.perf_counter() - started
    results["video_s"], results["video_peak_bytes"], (_, latents) = timed(video, repeats=3, warmup=0)
    results.save()

    # The same video with each model call on its own: its sum against the whole says what the loop
    # adds between calls (with the device idle, since each call was waited for).
    timed_models = TimedModels(components)
    pipeline.call_model = timed_models
    synchronize()
    started = time.perf_counter()
    pipeline.decode(pipeline.denoise(request), request.decode_chunk_size)
    synchronize()
    whole = time.perf_counter() - started
    calls = {name: dict(calls=timed_models.calls[name], seconds=seconds)
             for name, seconds in timed_models.seconds.items()}
    results["calls_timed_alone"] = dict(whole_s=whole, models=calls,
                                        outside_models_s=whole - sum(timed_models.seconds.values()))
    results.save()

    decoder = components["vae_decoder"].decoder
    unscaled = ((1 / pipeline.vae_scaling_factor) * latents)[0].permute(1, 0, 2, 3).contiguous()
    shape = tuple(unscaled.shape)
    cost = decoder.cost(shape)
    automatic = decoder.automatic_chunk(shape)
    results["decode_plan"] = dict(fixed_bytes=cost.fixed, per_frame_bytes=cost.per_frame,
                                  available_bytes=decoder.available_bytes(), automatic_chunk=automatic)
    # What the plan would be had it measured the eager decoder instead.
    eager = ChunkedDecoder(decoder.vae, decoder.device, decoder.dtype, decoder.memory_budget_bytes,
                           decoder.tile_above_pixels)
    eager_cost = eager.cost(shape)
    results["eager_decode_plan"] = dict(fixed_bytes=eager_cost.fixed, per_frame_bytes=eager_cost.per_frame,
                                        automatic_chunk=eager.automatic_chunk(shape))
    for chunk in [0, *(int(c) for c in args.chunks.split(",") if c)]:
        seconds, peak, _ = timed(lambda chunk=chunk: decoder.decode(unscaled, chunk), repeats=3)
        planned = automatic if chunk == 0 else chunk
        results.append("decodes", dict(chunk=chunk, frames_per_call=planned, seconds=seconds, peak_bytes=peak,
                                       predicted_peak_bytes=cost.fixed + cost.per_frame * planned))


if __name__ == "__main__":
    main()
