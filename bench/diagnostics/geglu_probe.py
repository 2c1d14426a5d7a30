"""The GEGLU inside its matrix product (QuACK's kernel, openspeedy/unet/fused_geglu.py) against what a compiled
UNet runs for it (cuBLAS's projection, then Inductor's ``gelu * mul``) and against cuBLAS's projection
alone, and against the same kernel with the CuTe DSL's own erf in its epilogue (``--library-erf``), at
every feed-forward shape of one UNet CFG call: full-size I2VGen-XL architecture with RANDOM fp16
weights. Times are triton.testing.do_bench's (CUDA events, the L2 cache flushed between runs), after
a first call that tunes the kernel (its seconds are reported); the error is each result's relative L2
against float32 arithmetic.

Usage: python -m bench.diagnostics.geglu_probe --out DIR [--size 16x512x512] [--library-erf]. Writes
DIR/geglu_probe.json.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import I2VGenXLUNet
from diffusers.models.activations import GEGLU

from bench.common import DEVICE, Results, relative_l2, synchronize
from bench.diagnostics.lossless_probe import unet_inputs
from openspeedy.export.random_checkpoint import FULL_SIZE
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet.fused_geglu import pair_rows, paired_geglu, reference_geglu


def feed_forward_shapes(unet: I2VGenXLUNet, inputs: dict) -> list[dict]:
    """(tokens, features in, inner features) of each GEGLU one forward runs, with how often it runs."""
    shapes: dict[tuple[int, int, int], int] = {}

    def hook(module, args, _output):
        key = (args[0].numel() // args[0].shape[-1], module.proj.in_features, module.proj.out_features // 2)
        shapes[key] = shapes.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, GEGLU)]
    with torch.inference_mode():
        unet(**inputs, return_dict=False)
    for handle in handles:
        handle.remove()
    return [dict(tokens=t, features_in=k, inner=n, calls=c) for (t, k, n), c in shapes.items()]


def main() -> None:
    from triton.testing import do_bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH of the video")
    parser.add_argument("--library-erf", action="store_true",
                        help="also time the kernel with the CuTe DSL's erf (bench/diagnostics/geglu_library_erf.py)")
    args = parser.parse_args()
    variants = {}
    if args.library_erf:
        from bench.diagnostics.geglu_library_erf import library_erf_epilogue
        from openspeedy.unet.fused_geglu_kernel import geglu_rows

        variants["library_erf"] = functools.partial(geglu_rows, epilogue=library_erf_epilogue)
    (frames, height, width), = parse_shapes(args.size)
    dtype = torch.float16
    torch.manual_seed(0)
    with torch.device(DEVICE):
        unet = I2VGenXLUNet(in_channels=4, out_channels=4, **FULL_SIZE.unet).to(dtype).eval()
    shapes = feed_forward_shapes(unet, unet_inputs(unet, frames, height // 8, 2, dtype))
    del unet
    results = Results(args.out / "geglu_probe.json", size=args.size, kernel="QuACK GEMM, GEGLU epilogue")
    total = dict(compiled_ms=0.0, kernel_ms=0.0, projection_alone_ms=0.0) | {f"{name}_ms": 0.0 for name in variants}
    for shape in shapes:
        x = torch.randn(shape["tokens"], shape["features_in"], device=DEVICE, dtype=dtype)
        linear = torch.nn.Linear(shape["features_in"], 2 * shape["inner"], device=DEVICE, dtype=dtype)
        weight, bias = linear.weight.detach(), linear.bias.detach()
        paired_weight, paired_bias = pair_rows(weight), pair_rows(bias)
        torch._dynamo.reset()  # each shape its own compile, as the UNet's graph has it
        compiled = torch.compile(reference_geglu, dynamic=False)
        with torch.inference_mode():
            exact = reference_geglu(x.float(), weight.float(), bias.float())
            started = time.perf_counter()
            fused = paired_geglu(x, paired_weight, paired_bias)
            synchronize()
            row = dict(shape, kernel_first_call_s=time.perf_counter() - started,
                       compiled_ms=do_bench(lambda: compiled(x, weight, bias)),  # noqa: B023 - called now
                       kernel_ms=do_bench(lambda: paired_geglu(x, paired_weight, paired_bias)),  # noqa: B023
                       projection_alone_ms=do_bench(lambda: F.linear(x, weight, bias)),  # noqa: B023
                       compiled_relative_l2=relative_l2(compiled(x, weight, bias), exact),
                       kernel_relative_l2=relative_l2(fused, exact))
            for name, variant in variants.items():
                started = time.perf_counter()
                out = variant(x, paired_weight, paired_bias)
                synchronize()
                row |= {f"{name}_first_call_s": time.perf_counter() - started,
                        f"{name}_ms": do_bench(lambda: variant(x, paired_weight, paired_bias)),  # noqa: B023
                        f"{name}_relative_l2": relative_l2(out, exact)}
        flops = 2 * shape["tokens"] * shape["features_in"] * 2 * shape["inner"]
        row |= dict(compiled_tflops=flops / row["compiled_ms"] / 1e9, kernel_tflops=flops / row["kernel_ms"] / 1e9)
        for key in total:
            total[key] += row[key] * shape["calls"]
        results.append("shapes", row)
    results["per_unet_call"] = total | dict(saved_ms=total["compiled_ms"] - total["kernel_ms"])


if __name__ == "__main__":
    main()
