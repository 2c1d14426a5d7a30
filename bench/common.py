"""What every benchmark shares: the device and its description, timing with peak memory, the benchmark's
request, OpenSpeedy's pipeline and diffusers' (the peers: eager, compiled, tuned as its speed guide says) on
the same weights and noise, each one's compile time, the differences between their outputs, FLOP
counting, and Triton's statistics.

Benchmarks run as modules from the repository root (``python -m bench.end_to_end ...``).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from openspeedy.local_models import LocalModels
from openspeedy.pipeline import I2VGenXL, posterior_seed
from openspeedy.unet.options import UNetOptions, parse

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RANDOM_WEIGHTS_NOTE = (
    "full-size I2VGen-XL architecture, RANDOM fp16 weights: real speed and memory, meaningless pictures")
DEFAULT_CHECKPOINT = Path("/tmp/i2vgen_xl_full_random")


def unet_variants(spellings: str, ablate: str = "") -> dict[str, UNetOptions]:
    """The UNet options a benchmark runs, by name. ``spellings`` are openspeedy.unet.options spellings
    separated by ``;`` (one spelling holds commas: ``eager;fast;fast,-fused_residuals``). ``ablate`` (a
    spelling) adds itself, then itself without each technique that is on in it, one a row, in the order
    applied (``UNetOptions.without``: a technique's dependants go with it)."""
    variants = {spelling.strip(): parse(spelling.strip()) for spelling in spellings.split(";") if spelling.strip()}
    if ablate:
        base = parse(ablate)
        variants[ablate] = base
        variants |= {f"{ablate},-{name}": base.without(name) for name in base.techniques_on}
    return variants


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def driver_version() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_description(note: str = RANDOM_WEIGHTS_NOTE) -> dict[str, str]:
    """What every result file names: GPU, driver, torch, date, and what the weights are."""
    return dict(note=note, gpu=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke run)",
                driver=driver_version() if DEVICE.type == "cuda" else "none", torch=torch.__version__,
                date=datetime.date.today().isoformat())


def ensure_checkpoint(path: Path, smoke: bool) -> torch.dtype:
    """Builds the random checkpoint at ``path`` unless it is there; returns its dtype. ``smoke``: the tiny
    architecture in float32, which checks a benchmark on a CPU in seconds."""
    from openspeedy.export.random_checkpoint import FULL_SIZE, TINY, build_checkpoint

    architecture, dtype = (TINY, torch.float32) if smoke else (FULL_SIZE, torch.float16)
    if not (path / "model_index.json").exists():
        with torch.device(DEVICE):  # initialise the 2.4 B random parameters on the GPU: seconds, not minutes
            build_checkpoint(path, architecture, dtype=dtype)
    return dtype


def _peak_reset() -> int:
    if DEVICE.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_since(base: int) -> int:
    return torch.cuda.max_memory_allocated() - base if DEVICE.type == "cuda" else 0


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, int, Any]:
    """Median seconds over ``repeats`` runs after ``warmup``, the peak memory above the start, the last result."""
    for _ in range(warmup):
        fn()
    synchronize()
    base = _peak_reset()
    times, result = [], None
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_since(base), result


def video_request(steps: int, frames: int = 16, height: int = 512, width: int = 512, **extra: np.ndarray):
    """The benchmark's request: a random 768x512 image cropped to the video size, seed 7; ``extra`` adds
    contract inputs (the opt-in approximations, previews)."""
    from PIL import Image

    from openspeedy.contracts import I2VGEN_XL_STREAM
    from openspeedy.request import RequestSettings, parse_request

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 768, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    inputs = {
        "IMAGE": np.array([buffer.getvalue()], dtype=object),
        "PROMPT": np.array([b"a lighthouse by the sea"], dtype=object),
        "NUM_FRAMES": np.array([frames], np.int32),
        "HEIGHT": np.array([height], np.int32),
        "WIDTH": np.array([width], np.int32),
        "NUM_INFERENCE_STEPS": np.array([steps], np.int32),
        "SEED": np.array([7], np.int64),
        "DECODE_CHUNK_SIZE": np.array([0], np.int32),
    }
    # The stream model's inputs: the plain model's and its own (PREVIEW_INTERVAL).
    return parse_request(inputs | extra, RequestSettings(), I2VGEN_XL_STREAM)


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


class Measured(NamedTuple):
    """One pipeline's video, timed."""

    seconds: float
    peak_bytes: int
    video: np.ndarray  # uint8 frames
    latents: torch.Tensor  # the final latents, float32 on the CPU
    compile_s: float | None  # seconds the first warm-up call took beyond a warm one; None without a warm-up


def warm_up(run: Callable[[Any], Any], warmup_request) -> float:
    """Runs ``warmup_request`` twice; returns the seconds the first call (compiling, capturing CUDA graphs,
    autotuning) took beyond the second, warm one: the pipeline's compile time at this size."""
    seconds = []
    for _ in range(2):
        synchronize()
        start = time.perf_counter()
        run(warmup_request)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds[0] - seconds[1]


def openspeedy_pipeline(checkpoint: Path, components) -> I2VGenXL:
    scheduler = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    return I2VGenXL(LocalModels(components), scheduler, scaling, DEVICE)


def run_openspeedy(checkpoint: Path, components, request, repeats: int = 2, warmup_request=None) -> Measured:
    """OpenSpeedy's pipeline in process, timed.

    ``warmup_request`` (a few steps at the same size) warms up instead of one more full video, and gives
    the compile time (warm_up)."""
    pipeline = openspeedy_pipeline(checkpoint, components)

    def run(this=request):
        latents = pipeline.denoise(this)
        return pipeline.decode(latents, this.decode_chunk_size), latents

    compile_s = warm_up(run, warmup_request) if warmup_request is not None else None
    seconds, peak, (video, latents) = timed(run, repeats=repeats, warmup=0 if warmup_request else 1)
    return Measured(seconds, peak, video.cpu().numpy(), latents.float().cpu(), compile_s)


# The peers, diffusers' I2VGenXLPipeline (SDPA) as a user runs it (reference_pipeline says how).
PEERS = ("diffusers", "diffusers-compile", "diffusers-tuned")

# The Inductor settings of diffusers' speed guide ("Accelerate inference of text-to-image diffusion
# models", its torch.compile section), which it sets globally before compiling.
SPEED_GUIDE_INDUCTOR = dict(conv_1x1_as_mm=True, coordinate_descent_tuning=True, epilogue_fusion=False,
                            coordinate_descent_check_all_directions=True)


def reference_pipeline(checkpoint: Path, dtype: torch.dtype, peer: str = "diffusers"):
    """diffusers' I2VGenXLPipeline on the checkpoint, as ``peer`` (one of PEERS):

    - ``diffusers``: eager;
    - ``diffusers-compile``: what a user who wants speed writes, ``pipe.unet.fuse_qkv_projections();
      pipe.unet = torch.compile(pipe.unet)`` (default mode);
    - ``diffusers-tuned``: diffusers' speed guide where it applies: fused QKV projections (UNet and VAE),
      the VAE channels-last, ``torch.compile(..., mode="max-autotune", fullgraph=True)`` of the UNet and
      of ``vae.decode``, under SPEED_GUIDE_INDUCTOR (reference_settings). The UNet keeps its layout: the
      guide's ``pipe.unet.to(memory_format=torch.channels_last)`` fails on this UNet's Conv3d weights
      ("required rank 4 tensor"). The guide's bfloat16 is left out so that every pipeline of a run
      computes in the same dtype, and its dynamic int8 quantization since it is lossy. It decodes all
      frames in one call (decode_chunk)."""
    from diffusers import I2VGenXLPipeline

    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; the peers are {', '.join(PEERS)}")
    reference = I2VGenXLPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(DEVICE)
    # transformers 5 flattened CLIPTextModel; the deprecated pipeline still reads `.text_model` for its
    # default clip_skip. An attribute, not a registered submodule, restores it.
    object.__setattr__(reference.text_encoder, "text_model", reference.text_encoder)
    reference.set_progress_bar_config(disable=True)
    if peer == "diffusers-compile":
        reference.unet.fuse_qkv_projections()
        reference.unet = torch.compile(reference.unet)
    elif peer == "diffusers-tuned":
        reference.unet.fuse_qkv_projections()
        reference.vae.fuse_qkv_projections()
        reference.vae.to(memory_format=torch.channels_last)
        reference.unet = torch.compile(reference.unet, mode="max-autotune", fullgraph=True)
        reference.vae.decode = torch.compile(reference.vae.decode, mode="max-autotune", fullgraph=True)
    return reference


def decode_chunk(peer: str, request) -> int:
    """Frames per ``vae.decode`` call: the pipeline's default, one, except for the tuned peer, whose
    compiled decode replays a CUDA graph (max-autotune) that overwrites its previous output: the one-frame
    chunks the pipeline keeps for its final concatenation would fail there ("accessing tensor output of
    CUDAGraphs that has been overwritten by a subsequent run"). It decodes all frames in one call, as the
    guide's image pipelines decode once per image."""
    return request.num_frames if peer == "diffusers-tuned" else 1


def reference_settings(peer: str):
    """The Inductor settings ``peer`` compiles under, for as long as it runs: the guide sets them for the
    whole process, which here would change how every later pipeline compiles."""
    if peer == "diffusers-tuned":
        return torch._inductor.config.patch(SPEED_GUIDE_INDUCTOR)
    return contextlib.nullcontext()


def run_reference(checkpoint: Path, dtype: torch.dtype, request, repeats: int = 2, warmup_request=None,
                  peer: str = "diffusers") -> Measured:
    """diffusers' I2VGenXLPipeline as ``peer`` (see reference_pipeline), timed, with the same seed and
    noise as OpenSpeedy; ``warmup_request`` as in run_openspeedy."""
    with reference_settings(peer):
        return _run_reference(checkpoint, dtype, request, repeats, warmup_request, peer)


def _run_reference(checkpoint: Path, dtype: torch.dtype, request, repeats: int, warmup_request, peer: str
                   ) -> Measured:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.utils.torch_utils import randn_tensor

    reference = reference_pipeline(checkpoint, dtype, peer)
    # OpenSpeedy draws all noise in float32 on the CPU (a seed gives the same video on any device and
    # precision); the reference draws it in the pipeline's dtype, and its VAE posterior noise from the
    # GPU's global generator. Hand the reference the same noise, or the comparison measures the noise.
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

        def float32_posterior_sample(self, generator=None, this=this):
            generator = torch.Generator("cpu").manual_seed(posterior_seed(this.seed))
            noise = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=torch.float32)
            return self.mean + self.std * noise.to(self.mean.dtype)

        original = DiagonalGaussianDistribution.sample
        DiagonalGaussianDistribution.sample = float32_posterior_sample
        try:
            return reference(prompt=this.prompt, image=this.image, height=this.height, width=this.width,
                             num_frames=this.num_frames, num_inference_steps=this.num_inference_steps,
                             latents=initial, output_type="np", decode_chunk_size=decode_chunk(peer, this)).frames[0]
        finally:
            DiagonalGaussianDistribution.sample = original

    compile_s = warm_up(run, warmup_request) if warmup_request is not None else None
    seconds, peak, video = timed(run, repeats=repeats, warmup=0 if warmup_request else 1)
    return Measured(seconds, peak, (video * 255).round().astype(np.uint8), final_latents[0], compile_s)


def difference(ours: np.ndarray, reference: np.ndarray, ours_latents=None, reference_latents=None) -> dict:
    """Video difference (relative L2, max uint8 step) and, given them, the final latents' relative L2."""
    delta = ours.astype(np.float64) - reference.astype(np.float64)
    result = dict(relative_l2=float(np.linalg.norm(delta) / np.linalg.norm(reference.astype(np.float64))),
                  max_abs_uint8=float(np.abs(delta).max()))
    if ours_latents is not None:
        result["latents_relative_l2"] = float((ours_latents - reference_latents).norm() / reference_latents.norm())
    return result


def psnr_db(ours: np.ndarray, reference: np.ndarray) -> float | None:
    """Peak signal-to-noise ratio of uint8 frames against ``reference``, in dB; None where they are equal
    (infinite, which JSON cannot hold)."""
    mse = float(np.mean((ours.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def count_files(directory: Path | None) -> int | None:
    """Files under ``directory`` (a compile cache's, before a run: warm or cold); 0 where it does not
    exist yet, None where no directory is given."""
    if directory is None:
        return None
    return sum(1 for path in directory.rglob("*") if path.is_file()) if directory.exists() else 0


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference.float()).norm() / reference.float().norm())


class Results:
    """A result file that is rewritten after every measurement, so a run cut short keeps what it measured."""

    def __init__(self, path: Path, **header: Any):
        self.path = path
        self.data: dict[str, Any] = dict(device_description(), **header)
        path.parent.mkdir(parents=True, exist_ok=True)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def append(self, key: str, row: dict) -> None:
        self.data.setdefault(key, []).append(row)
        print(key, json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))


# Triton's per-model statistics, as read by the serving benchmarks.
STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def statistics_counters(triton_client) -> dict[str, dict[str, int]]:
    """Per model, Triton's cumulative success count and nanoseconds per part (a snapshot to subtract)."""
    counters = {}
    for model in triton_client.get_inference_statistics(as_json=True)["model_stats"]:
        stats = model["inference_stats"]
        counters[model["name"]] = dict(count=int(stats["success"].get("count", 0)),
                                       **{part: int(stats[part].get("ns", 0)) for part in STAT_PARTS})
    return counters


def model_statistics(triton_client, since: dict[str, dict[str, int]] | None = None) -> dict:
    """Per model: requests, and mean ms of queue / input / compute / output, from Triton's statistics;
    with ``since`` (an earlier statistics_counters), only the requests after it: a warm-up request's
    compilation and allocations would otherwise inflate every mean."""
    table = {}
    for name, now in statistics_counters(triton_client).items():
        before = (since or {}).get(name, {})
        delta = {key: value - before.get(key, 0) for key, value in now.items()}
        if delta["count"]:
            table[name] = dict(requests=delta["count"],
                               **{f"{part}_ms": delta[part] / delta["count"] / 1e6 for part in STAT_PARTS})
    return table
