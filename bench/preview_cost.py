"""What live previews cost: the same video timed without previews and with one every N steps, in one
process on one pipeline (OpenSpeedy's, in process, the stream model's preview hook), full-size
I2VGen-XL architecture with RANDOM weights, 50 steps by default.

A preview is the scheduler's predicted clean latents mapped to RGB by a 4x3 matrix, a few frames copied
to the host and written as a PNG (openspeedy/preview.py): no VAE decode. Each row: seconds per video
(median of --repeats after a warm-up video), the previews made, and the cost against no previews.

Usage: python -m bench.preview_cost --out DIR [--sizes 16x512x512,...] [--preview-interval 5,1] [--variant fast]
Writes DIR/preview_cost.json after every measurement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    DEVICE,
    Results,
    ensure_checkpoint,
    openspeedy_pipeline,
    timed,
    unet_variants,
    video_request,
)
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.model_parameters import parse_shapes
from openspeedy.preview import Previews


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", default="16x512x512", help="FRAMESxHEIGHTxWIDTH,...")
    parser.add_argument("--preview-interval", default="5,1", help="intervals to time against none, e.g. 5,1")
    parser.add_argument("--variant", default="fast", help="the UNet options' spelling (openspeedy/unet/options.py)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    dtype_name = str(ensure_checkpoint(args.checkpoint, args.smoke)).removeprefix("torch.")
    intervals = [int(n) for n in args.preview_interval.split(",") if n]
    (variant, options), = unet_variants(args.variant).items()
    results = Results(args.out / "preview_cost.json", steps=args.steps, variant=variant, sizes=[])
    components = {name: load_component(name, args.checkpoint, DEVICE, dtype_name,
                                       options.as_parameters() if name == "unet" else None)
                  for name in COMPONENT_CLASSES}
    pipeline = openspeedy_pipeline(args.checkpoint, components)

    for frames, height, width in parse_shapes(args.sizes):
        row = dict(frames=frames, height=height, width=width, runs=[])
        results["sizes"].append(row)
        baseline = None
        for interval in [0, *intervals]:
            request = video_request(args.steps, frames, height, width,
                                    PREVIEW_INTERVAL=np.array([interval], np.int32))
            made = []

            def run(request=request, made=made):
                # As the stream model serves it: no hook at all without previews.
                previews = Previews(request)
                return pipeline.generate(request, on_step=lambda done, total: made.append(previews.take(done)),
                                         on_prediction=previews if request.preview_interval else None)

            seconds, peak, _ = timed(run, repeats=args.repeats, warmup=1)
            baseline = baseline if baseline is not None else seconds
            count = sum(1 for png in made[-args.steps:] if png is not None)  # the last timed video's
            row["runs"].append(dict(preview_interval=interval, seconds=seconds, previews=count,
                                    ms_per_preview=1000 * (seconds - baseline) / count if count else None,
                                    cost_vs_none=seconds / baseline - 1, peak_bytes=peak))
            results.save()
            print(row["runs"][-1], flush=True)
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
