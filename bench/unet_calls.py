"""One UNet call (a CFG batch) per set of UNet options on the GPU, full-size architecture with RANDOM weights:
ms per call, achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode on the eager model), peak memory,
load-and-first-call seconds (compilation, capture) and the relative L2 of the output against eager; the
shallow path of feature reuse next to the full one; the temporal attention kernel against PyTorch's SDPA
backends at the UNet's temporal shapes; optionally a kernel profile of some variants. On a GPU, the card's
16-bit matrix rate is measured in the same run (before the first variant and after the last), so each
call's share of it compares with the card it ran on: the same model of card runs at different speeds
on different machines.

Usage: python -m bench.unet_calls --out DIR [--variants "eager;compile;fast"] [--ablate fast] [--size 16x512x512]
       [--feature-reuse fast] [--attention] [--profile fast] [--dtype float16] [--prepare-jobs 6 [--prepare-only]]
``--variants`` takes option spellings (openspeedy/unet/options.py) separated by ``;``, since one spelling
holds commas: ``"eager;fast;fast,-fused_residuals"``. ``--ablate fast`` runs ``fast``, then ``fast`` without
each technique that is on in it, one a row (after the ``--variants``). Each row keeps the UNet's recipe
report: what each technique did at load, or why it was skipped.
Writes DIR/unet_calls.json after every measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    DEVICE,
    Results,
    count_unet_flops,
    ensure_checkpoint,
    relative_l2,
    synchronize,
    timed,
    unet_variants,
)
from openspeedy.components import load_component
from openspeedy.contracts import UNET
from openspeedy.example_inputs import as_cfg_pair, example_inputs
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet.fp8 import unet_dtype
from openspeedy.unet.options import PRESETS, UNetOptions


def load(checkpoint: Path, options: UNetOptions, dtype: str):
    synchronize()
    started = time.perf_counter()
    unet = load_component("unet", checkpoint, DEVICE, unet_dtype(options, dtype), options.as_parameters())
    return unet, started


def prepare(checkpoint: Path, variants: dict[str, UNetOptions], size: str, dtype: str, jobs: int,
            log: Path) -> list[dict]:
    """Compiles each variant at ``size`` in a process of its own, ``jobs`` at a time, into the on-disk
    compile caches that every process on the machine shares, so that the timed run loads each from them.
    A full-size compile is minutes of mostly single-threaded CPU work: a dozen of them one after the other
    do not fit a lease of the GPU machine, while its 16 cores can run several at once. The timing itself
    stays sequential, one variant at a time in one process."""

    def one(item: tuple[str, UNetOptions]) -> dict:
        variant, options = item
        parameters = options.as_parameters() | {"warmup_shapes": size}
        code = ("from openspeedy.components import load_component; "
                f"load_component('unet', {str(checkpoint)!r}, 'cuda', {unet_dtype(options, dtype)!r}, {parameters!r})")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        with log.open("a") as file:
            file.write(f"=== {variant}: exit {done.returncode}\n{done.stdout}{done.stderr[-4000:]}\n")
        return dict(variant=variant, seconds=time.perf_counter() - started, returncode=done.returncode)

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, variants.items()))


def call_row(unet, inputs, flops: int, started: float, reference, repeats: int, **extra) -> tuple[dict, torch.Tensor]:
    out = unet.infer(inputs)["NOISE_PRED"]  # compiles and captures, where the variant does
    synchronize()
    first_call_s = time.perf_counter() - started
    seconds, peak, out = timed(lambda: unet.infer(inputs)["NOISE_PRED"], repeats=repeats, warmup=2)
    row = dict(ms=seconds * 1e3, tflops=flops / seconds / 1e12, peak_bytes=peak, load_and_first_call_s=first_call_s,
               **extra)
    if reference is not None:
        row["relative_l2_vs_eager"] = relative_l2(out, reference)
    return row, out


def matrix_rate(dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of a size x size x size matrix product on random data: the card's matrix rate as this run
    finds it (the median of ``repeats`` products, timed with CUDA events after warm-up)."""
    a, b = (torch.randn(size, size, device=DEVICE, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / sorted(times)[repeats // 2] / 1e12


def attention_shapes(frames: int, height: int, width: int, batch: int = 2) -> list[tuple[int, int, int]]:
    """(sequences, tokens, heads) of the temporal attentions at each UNet level (head size 64)."""
    shapes = []
    for level, channels in enumerate((320, 640, 1280, 1280)):
        pixels = (height // 8 >> level) * (width // 8 >> level)
        shapes.append((batch * pixels, frames, channels // 64))
    return shapes


def bench_attention(frames: int, height: int, width: int, dtype: torch.dtype) -> list[dict]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from openspeedy.unet.temporal_attention import temporal_attention

    rows = []
    for sequences, tokens, heads in attention_shapes(frames, height, width):
        qkv = torch.randn(sequences, tokens, 3 * heads * 64, device=DEVICE, dtype=dtype)
        q, k, v = qkv.chunk(3, dim=-1)
        split = [t.reshape(sequences, tokens, heads, 64).transpose(1, 2) for t in (q, k, v)]
        row = dict(sequences=sequences, tokens=tokens, heads=heads,
                   bytes_moved=4 * sequences * tokens * heads * 64 * qkv.element_size())
        reference = F.scaled_dot_product_attention(*[t.float() for t in split]).transpose(1, 2).reshape(q.shape)
        seconds, _, out = timed(lambda q=q, k=k, v=v, heads=heads: temporal_attention(q, k, v, heads), repeats=20,
                                warmup=3)
        row["kernel_ms"], row["kernel_relative_l2"] = seconds * 1e3, relative_l2(out, reference)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    # What diffusers' processor runs: SDPA on the head views, then the heads back in place.
                    def sdpa(split=split, shape=q.shape):
                        return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(shape)

                    seconds, _, _ = timed(sdpa, repeats=20, warmup=3)
                row[f"sdpa_{name}_ms"] = seconds * 1e3
            except RuntimeError as error:
                row[f"sdpa_{name}_ms"] = f"unavailable: {str(error)[:80]}"
        rows.append(row)
    return rows


def bench_feature_reuse(unet, inputs, reference: torch.Tensor, repeats: int) -> dict:
    """The full path that keeps its deep features and the shallow path that reuses them, per call."""
    started = time.perf_counter()
    keep = inputs | {"RETURN_DEEP_FEATURES": torch.ones(1, dtype=torch.int32)}
    full = unet.infer(keep)
    shallow = inputs | {"DEEP_FEATURES": full["DEEP_FEATURES"]}
    unet.infer(shallow)
    synchronize()
    compile_s = time.perf_counter() - started
    full_s, _, full = timed(lambda: unet.infer(keep), repeats=repeats, warmup=1)
    shallow_s, _, out = timed(lambda: unet.infer(shallow)["NOISE_PRED"], repeats=repeats, warmup=1)
    return dict(full_with_features_ms=full_s * 1e3, shallow_ms=shallow_s * 1e3, shallow_fraction=shallow_s / full_s,
                compile_and_capture_s=compile_s, full_relative_l2_vs_eager=relative_l2(full["NOISE_PRED"], reference),
                # the same step's own features: what the shallow path changes by itself
                shallow_same_step_relative_l2=relative_l2(out, full["NOISE_PRED"]),
                deep_features_shape=list(full["DEEP_FEATURES"].shape))


def profile_calls(unet, inputs, path: Path, calls: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            unet.infer(inputs)
        synchronize()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--variants", default="eager;fast",
                        help=f"option spellings separated by ';', each a preset ({', '.join(PRESETS)}) and edits")
    parser.add_argument("--ablate", default="", help="this spelling, then it without each of its techniques")
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    parser.add_argument("--feature-reuse", default="", help="variants (spellings, ';') whose shallow path is timed too")
    parser.add_argument("--attention", action="store_true", help="temporal attention kernel against SDPA")
    parser.add_argument("--profile", default="", help="variants (spellings, ';') whose kernels are profiled")
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    parser.add_argument("--prepare-jobs", type=int, default=0,
                        help="first compile every variant, this many processes at once, into the shared caches")
    parser.add_argument("--prepare-only", action="store_true", help="with --prepare-jobs: compile, do not time")
    args = parser.parse_args()
    ensure_checkpoint(args.checkpoint, args.smoke)
    dtype = "float32" if args.smoke else args.dtype
    ((frames, height, width),) = parse_shapes(args.size)
    repeats = 1 if args.smoke else 10
    variants = unet_variants(args.variants, args.ablate)
    if args.prepare_jobs and DEVICE.type == "cuda":
        args.out.mkdir(parents=True, exist_ok=True)
        compiled = [name for name, options in variants.items() if options.compile_mode]
        prepared = prepare(args.checkpoint, {name: variants[name] for name in compiled}, args.size, dtype,
                           args.prepare_jobs, args.out / "prepare.log")
        Results(args.out / "unet_calls_prepare.json", size=args.size, jobs=args.prepare_jobs)["prepared"] = prepared
        if args.prepare_only:
            return
    results = Results(args.out / "unet_calls.json", frames=frames, height=height, width=width, batch=2, dtype=dtype)
    if args.attention and DEVICE.type == "cuda":
        results["temporal_attention"] = bench_attention(frames, height, width, getattr(torch, dtype))

    rate_before = None
    if DEVICE.type == "cuda":
        rate_before = results["matrix_tflops_before"] = matrix_rate(getattr(torch, dtype))

    reference, flops, inputs = None, None, None
    for variant, options in variants.items():
        unet, started = load(args.checkpoint, options, dtype)
        if inputs is None:
            # A CFG call as the pipeline makes it (the rows share the sample): what runtimes that compute
            # the shared layers once see in a video. FLOPs are counted for the pair in full.
            inputs = as_cfg_pair(example_inputs(UNET, unet.sizes(frames, height, width), device=DEVICE))
            inputs["TIMESTEP"] = torch.tensor([500], device=DEVICE)
            flops = count_unet_flops(unet, inputs)
            results["flops"] = flops
        row, out = call_row(unet, inputs, flops, started, reference, repeats, variant=variant,
                            options=options.as_parameters())
        row["recipe"] = unet.recipe_report  # after the first calls: what the compiler pass did is known
        if rate_before:
            row["share_of_matrix_rate"] = row["tflops"] / rate_before
        reference = out if reference is None else reference
        results.append("calls", row)
        if variant in args.feature_reuse.split(";"):
            reuse = bench_feature_reuse(unet, inputs, reference, repeats)
            results.append("feature_reuse", dict(variant=variant, **reuse))
        if variant in args.profile.split(";") and DEVICE.type == "cuda":
            profile_calls(unet, inputs, args.out / f"profile_{variant}_{args.size}.txt")
        del unet
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    if rate_before:
        results["matrix_tflops_after"] = matrix_rate(getattr(torch, dtype))


if __name__ == "__main__":
    main()
