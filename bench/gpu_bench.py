"""GPU benchmark of the full-size I2VGen-XL architecture with RANDOM fp16 weights (speed and memory
are real; the pictures are not). One process, one GPU:

1. chunked VAE decoding: time and peak memory for 16x512x512, 24x768x768, 32x512x512 at
   each chunk size, at automatic and all at once;
2. the image-only work a latent-cache hit skips: CLIP image embedding + VAE encoding;
3. one UNet call (CFG batch 2, 16 frames 512x512): eager, with FLOPs counted by torch's FlopCounterMode;
4. a whole 50-step video through OpenSpeedy's pipeline (in process) and through diffusers'
   I2VGenXLPipeline, same weights, seed and settings, with the output difference.

Usage: python bench/gpu_bench.py --out DIR [--quick]. Writes DIR/gpu_bench.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from openspeedy.components import COMPONENT_CLASSES, load_component  # noqa: E402
from openspeedy.contracts import UNET  # noqa: E402
from openspeedy.example_inputs import example_inputs  # noqa: E402
from openspeedy.export.random_checkpoint import FULL_SIZE, TINY, build_checkpoint  # noqa: E402
from openspeedy.pipeline import I2VGenXL, LocalModels, posterior_seed  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset() -> int:
    if DEVICE.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_since(base: int) -> int:
    return torch.cuda.max_memory_allocated() - base if DEVICE.type == "cuda" else 0


def timed(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, int, object]:
    """Median seconds over ``repeats`` runs after ``warmup``, and the peak memory above the start."""
    for _ in range(warmup):
        fn()
    _sync()
    base = _peak_reset()
    times, result = [], None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_since(base), result


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


def bench_unet(unet, frames=16, height=512, width=512) -> dict:
    inputs = example_inputs(UNET, unet.sizes(frames, height, width), device=unet.device)
    inputs["TIMESTEP"] = torch.tensor([500], device=DEVICE)
    flops = count_unet_flops(unet, inputs)
    seconds, peak, _ = timed(lambda: unet.infer(inputs), repeats=10, warmup=2)
    return dict(frames=frames, height=height, width=width, batch=2, flops=flops, eager_ms=seconds * 1e3,
                eager_tflops=flops / seconds / 1e12, peak_bytes=peak)


def video_request(steps: int, frames: int = 16, height: int = 512, width: int = 512):
    """The benchmark's request: a random 768x512 image cropped to the video size, seed 7."""
    import io

    from PIL import Image

    from openspeedy.request import RequestSettings, parse_request

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 768, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return parse_request(
        {
            "IMAGE": np.array([buffer.getvalue()], dtype=object),
            "PROMPT": np.array([b"a lighthouse by the sea"], dtype=object),
            "NUM_FRAMES": np.array([frames], np.int32),
            "HEIGHT": np.array([height], np.int32),
            "WIDTH": np.array([width], np.int32),
            "NUM_INFERENCE_STEPS": np.array([steps], np.int32),
            "SEED": np.array([7], np.int64),
            "DECODE_CHUNK_SIZE": np.array([0], np.int32),
        },
        RequestSettings(),
    )


def count_unet_flops(unet, inputs) -> int:
    """FLOPs of one call of the UNet component's eager model on ``inputs`` (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    def floats(name: str) -> torch.Tensor:
        return inputs[name].to(unet.dtype)

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet.eager_model(floats("SAMPLE"), inputs["TIMESTEP"], fps=inputs["FPS"],
                         image_latents=floats("IMAGE_LATENTS"), image_embeddings=floats("IMAGE_EMBEDDINGS"),
                         encoder_hidden_states=floats("ENCODER_HIDDEN_STATES"))
    return counter.get_total_flops()


def client_options(request) -> dict:
    """``Client.generate`` keyword arguments for the benchmark's request (the image and prompt aside)."""
    return dict(num_frames=request.num_frames, height=request.height, width=request.width,
                num_inference_steps=request.num_inference_steps, seed=request.seed,
                decode_chunk_size=request.decode_chunk_size)


def run_openspeedy(checkpoint: Path, components, request, repeats: int = 2, warmup_request=None):
    """Seconds, peak bytes, uint8 frames and final latents of OpenSpeedy's pipeline, in process.

    ``warmup_request`` (a few steps at the same size) warms up instead of one more full video."""
    scheduler = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    pipeline = I2VGenXL(LocalModels(components), scheduler, 0.18125, DEVICE)

    def run(this=request):
        latents = pipeline.denoise(this)
        return pipeline.decode(latents, this.decode_chunk_size), latents

    if warmup_request is not None:
        run(warmup_request)
    seconds, peak, (video, latents) = timed(run, repeats=repeats, warmup=0 if warmup_request else 1)
    return seconds, peak, video.cpu().numpy(), latents.float().cpu()


def run_reference(checkpoint: Path, dtype: torch.dtype, request, repeats: int = 2, warmup_request=None):
    """Seconds, peak bytes, uint8 frames and final latents of diffusers' I2VGenXLPipeline (eager, SDPA),
    same seed; ``warmup_request`` as in run_openspeedy."""
    from diffusers import I2VGenXLPipeline

    reference = I2VGenXLPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(DEVICE)
    object.__setattr__(reference.text_encoder, "text_model", reference.text_encoder)
    reference.set_progress_bar_config(disable=True)

    # OpenSpeedy draws all noise in float32 on the CPU (a seed gives the same video on any device and
    # precision); the reference draws it in the pipeline's dtype, and its VAE posterior noise from the
    # GPU's global generator. Hand the reference the same noise, or the comparison measures the noise.
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.utils.torch_utils import randn_tensor

    final_latents = []
    decode_latents = reference.decode_latents

    def keep_latents(latents, *args, **kwargs):  # the final latents of the timed run itself
        final_latents[:] = [latents.float().cpu()]
        return decode_latents(latents, *args, **kwargs)

    reference.decode_latents = keep_latents

    def run(this=request):
        latent_shape = (1, 4, this.num_frames, this.height // 8, this.width // 8)
        initial = randn_tensor(latent_shape, generator=torch.Generator("cpu").manual_seed(this.seed),
                               device=DEVICE, dtype=torch.float32).to(dtype)

        def float32_posterior_sample(self, generator=None):
            generator = torch.Generator("cpu").manual_seed(posterior_seed(this.seed))
            noise = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=torch.float32)
            return self.mean + self.std * noise.to(self.mean.dtype)

        original = DiagonalGaussianDistribution.sample
        DiagonalGaussianDistribution.sample = float32_posterior_sample
        try:
            return reference(prompt=this.prompt, image=this.image, height=this.height, width=this.width,  # noqa: F821
                             num_frames=this.num_frames, num_inference_steps=this.num_inference_steps,
                             latents=initial, output_type="np").frames[0]
        finally:
            DiagonalGaussianDistribution.sample = original

    if warmup_request is not None:
        run(warmup_request)
    seconds, peak, video = timed(run, repeats=repeats, warmup=0 if warmup_request else 1)
    del reference
    return seconds, peak, (video * 255).round().astype(np.uint8), final_latents[0]


def difference(ours: np.ndarray, reference: np.ndarray, ours_latents=None, reference_latents=None) -> dict:
    """Video difference (relative L2, max uint8 step) and, given them, the final latents' relative L2."""
    delta = ours.astype(np.float64) - reference.astype(np.float64)
    result = dict(relative_l2=float(np.linalg.norm(delta) / np.linalg.norm(reference.astype(np.float64))),
                  max_abs_uint8=float(np.abs(delta).max()))
    if ours_latents is not None:
        result["latents_relative_l2"] = float((ours_latents - reference_latents).norm() / reference_latents.norm())
    return result


def bench_end_to_end(checkpoint: Path, components, steps: int) -> dict:
    request = video_request(steps)
    seconds, peak, ours, ours_latents = run_openspeedy(checkpoint, components, request)
    ref_seconds, ref_peak, theirs, their_latents = run_reference(checkpoint, components["unet"].dtype, request)
    return dict(frames=16, height=512, width=512, steps=steps, openspeedy_s=seconds, openspeedy_peak_bytes=peak,
                reference_s=ref_seconds, reference_peak_bytes=ref_peak,
                **difference(ours, theirs, ours_latents, their_latents))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/i2vgen_xl_full_random"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="one decode case, 5 steps")
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    architecture, dtype = (TINY, torch.float32) if args.smoke else (FULL_SIZE, torch.float16)
    if not (args.checkpoint / "model_index.json").exists():
        with torch.device(DEVICE):  # initialise the 2.4 B random parameters on the GPU: seconds, not minutes
            build_checkpoint(args.checkpoint, architecture, dtype=dtype)
    print(f"checkpoint ready in {time.time() - started:.0f} s", flush=True)
    dtype_name = str(dtype).removeprefix("torch.")
    components = {name: load_component(name, args.checkpoint, DEVICE, dtype_name) for name in COMPONENT_CLASSES}

    results = dict(
        note="full-size I2VGen-XL architecture, RANDOM fp16 weights: real speed and memory, meaningless pictures",
        gpu=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke run)",
        driver=_driver(),
        torch=torch.__version__,
        date=datetime.date.today().isoformat(),
    )
    results["vae_decode"] = bench_decode(components["vae_decoder"].decoder, args.quick)
    results["image_work"] = [bench_image_work(components, 512, 512), bench_image_work(components, 704, 1280)]
    print(results["image_work"], flush=True)
    results["unet"] = bench_unet(components["unet"])
    print(results["unet"], flush=True)
    results["end_to_end"] = bench_end_to_end(args.checkpoint, components, 5 if args.quick else args.steps)
    print(results["end_to_end"], flush=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _driver() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
