"""Where more lossless speed could come from, measured before building it (eager, no compile, so the
whole probe takes a minute): full-size I2VGen-XL architecture with RANDOM fp16 weights.

1. cuDNN's algorithm search (``torch.backends.cudnn.benchmark``) against its heuristics: the UNet
   forward with OpenSpeedy's layout (temporal convolutions as 2D, channels-last), each convolution
   shape alone, and the VAE decoder;
2. the part of a CFG call both halves compute alike (before the first cross-attention the two rows
   have the same sample, image latents, timestep and fps): its time at batch 1 against batch 2;
3. with torchao installed, its FP8 linear layers (dynamic per-row activation and weight scales, bf16
   in and out, compiled) against compiled bf16 ones at the UNet's feed-forward shapes.

Usage: python -m bench.diagnostics.lossless_probe --out DIR [--smoke]. Writes DIR/lossless_probe.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, I2VGenXLUNet

from bench.common import DEVICE, Results, timed
from openspeedy.export.random_checkpoint import FULL_SIZE, TINY
from openspeedy.unet.layout import channels_last, temporal_conv2d
from openspeedy.unet.temporal_attention import use_temporal_attention


def unet_inputs(unet: I2VGenXLUNet, frames: int, latent: int, batch: int, dtype) -> dict:
    config = unet.config
    options = dict(device=DEVICE, dtype=dtype)
    return dict(
        sample=torch.randn(batch, config.in_channels, frames, latent, latent, **options),
        timestep=torch.tensor([500], device=DEVICE),
        fps=torch.full((batch,), 16, device=DEVICE),
        image_latents=torch.randn(batch, config.in_channels, frames, latent, latent, **options),
        image_embeddings=torch.randn(batch, config.cross_attention_dim, **options),
        encoder_hidden_states=torch.randn(batch, 77, config.cross_attention_dim, **options),
    )


def with_benchmark(enabled: bool, fn, repeats: int):
    torch.backends.cudnn.benchmark = enabled
    try:
        return timed(fn, repeats=repeats, warmup=2)[0] * 1e3
    finally:
        torch.backends.cudnn.benchmark = False


def conv_shapes(unet: I2VGenXLUNet, inputs: dict) -> list[dict]:
    """Each distinct 2D convolution the UNet runs, with its input shape (recorded by a forward hook)."""
    seen, shapes = set(), []

    def hook(module, args, _output):
        key = (tuple(args[0].shape), tuple(module.weight.shape), module.padding, module.stride)
        if key not in seen:
            seen.add(key)
            shapes.append(dict(input=list(args[0].shape), weight=list(module.weight.shape),
                               padding=list(module.padding), stride=list(module.stride), calls=0))
        next(s for s in shapes if (tuple(s["input"]), tuple(s["weight"]), tuple(s["padding"]),
                                   tuple(s["stride"])) == key)["calls"] += 1

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        unet(**inputs, return_dict=False)
    for handle in handles:
        handle.remove()
    return shapes


def time_convs(shapes: list[dict], dtype, repeats: int) -> list[dict]:
    rows = []
    for shape in shapes:
        x = torch.randn(shape["input"], device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(shape["weight"], device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)

        def conv(x=x, w=w, shape=shape):
            return torch.nn.functional.conv2d(x, w, padding=shape["padding"], stride=shape["stride"])

        with torch.inference_mode():
            off = with_benchmark(False, conv, repeats)
            on = with_benchmark(True, conv, repeats)
        rows.append(shape | dict(heuristic_ms=off, benchmark_ms=on))
        print(rows[-1], flush=True)
    return rows


def shared_prefix(unet: I2VGenXLUNet, frames: int, latent: int, dtype, repeats: int) -> dict:
    """conv_in, transformer_in, the first resnet and temporal convolution at batch 1 and at batch 2."""
    first = unet.down_blocks[0]
    rows = {}
    for batch in (1, 2):
        x = torch.randn(batch * frames, 2 * unet.config.in_channels, latent, latent, device=DEVICE, dtype=dtype)
        emb = torch.randn(batch * frames, unet.config.block_out_channels[0] * 4, device=DEVICE, dtype=dtype)

        def prefix(x=x, emb=emb):
            h = unet.conv_in(x)
            h = unet.transformer_in(h, num_frames=frames, return_dict=False)[0]
            h = first.resnets[0](h, emb)
            return first.temp_convs[0](h, num_frames=frames)

        with torch.inference_mode():
            rows[f"batch{batch}_ms"] = with_benchmark(True, prefix, repeats)
    return rows


def fp8_linears(frames: int, latent: int, repeats: int) -> list[dict]:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    rows = []
    for level, channels in enumerate((320, 640, 1280)):
        tokens = 2 * frames * (latent >> level) ** 2
        for features_in, features_out in ((channels, 8 * channels), (4 * channels, channels)):
            x = torch.randn(tokens, features_in, device=DEVICE, dtype=torch.bfloat16)
            row = dict(tokens=tokens, features_in=features_in, features_out=features_out)
            for name in ("bf16", "fp8"):
                linear = torch.nn.Linear(features_in, features_out, device=DEVICE, dtype=torch.bfloat16)
                if name == "fp8":
                    quantize_(linear, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
                torch._dynamo.reset()  # each layer its own compile: past 8 shapes dynamo would fall back to eager
                compiled = torch.compile(linear)
                with torch.inference_mode():
                    row[f"{name}_ms"] = timed(lambda: compiled(x), repeats=repeats, warmup=2)[0] * 1e3  # noqa: B023
            rows.append(row)
            print(row, flush=True)
    return rows


def probe_unet(results: Results, architecture, frames: int, latent: int, dtype, repeats: int) -> None:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        unet = I2VGenXLUNet(in_channels=4, out_channels=4, **architecture.unet).to(dtype).eval()
    unet.fuse_qkv_projections()
    if DEVICE.type == "cuda":
        use_temporal_attention(unet)
    temporal_conv2d(unet)
    channels_last(unet)
    inputs = unet_inputs(unet, frames, latent, 2, dtype)

    def forward():
        return unet(**inputs, return_dict=False)[0]

    with torch.inference_mode():
        results["unet_forward"] = dict(heuristic_ms=with_benchmark(False, forward, repeats),
                                       benchmark_ms=with_benchmark(True, forward, repeats))
    results.save()
    print(results["unet_forward"], flush=True)
    results["shared_prefix"] = shared_prefix(unet, frames, latent, dtype, repeats)
    results.save()
    print(results["shared_prefix"], flush=True)
    results["unet_convs"] = time_convs(conv_shapes(unet, inputs), dtype, repeats)
    results.save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, float32: checks the script on a CPU")
    args = parser.parse_args()
    architecture, dtype = (TINY, torch.float32) if args.smoke else (FULL_SIZE, torch.float16)
    frames, latent, repeats = (4, 8, 1) if args.smoke else (16, 64, 5)
    results = Results(args.out / "lossless_probe.json", frames=frames, latent=latent)
    probe_unet(results, architecture, frames, latent, dtype, repeats)

    with torch.device(DEVICE):
        vae = AutoencoderKL(latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, **architecture.vae).to(dtype).eval()
    chunk = min(frames, 15)
    latents = torch.randn(chunk, 4, latent, latent, device=DEVICE, dtype=dtype)
    decode_rows = {}
    for layout in ("contiguous", "channels_last"):
        if layout == "channels_last":
            vae = vae.to(memory_format=torch.channels_last)
            latents = latents.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for enabled in (False, True):
                decode_rows[f"{layout}_{'benchmark' if enabled else 'heuristic'}_ms"] = with_benchmark(
                    enabled, lambda: vae.decode(latents).sample, repeats)  # noqa: B023 - called now
        results["vae_decode"] = dict(frames=chunk, **decode_rows)
        results.save()
    print(results["vae_decode"], flush=True)
    if DEVICE.type == "cuda":
        try:
            results["fp8_linears"] = fp8_linears(frames, latent, repeats)
        except ImportError as error:
            results["fp8_linears"] = dict(skipped=str(error))


if __name__ == "__main__":
    main()
