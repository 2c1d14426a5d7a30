"""``python -m openspeedy.export`` (also ``openspeedy export``): build a model repository."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from openspeedy.unet.options import PRESETS, RUNTIMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="diffusers-layout I2VGen-XL directory")
    source.add_argument("--tiny", action="store_true", help="make a tiny random-initialized model locally")
    parser.add_argument("--output", type=Path, required=True, help="model repository to write")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids for --device gpu (default: all)")
    parser.add_argument("--per-gpu-components", action="store_true",
                        help="with --device gpu --gpus 0,1,...: a copy of each component per GPU, so each GPU's "
                             "orchestrator keeps its sub-requests and tensors on its own GPU")
    parser.add_argument("--cfg-parallel", action="store_true",
                        help="run the two classifier-free guidance halves of each UNet call at once, one per unet "
                             "instance: 2 CPU instances, or one per GPU with --device gpu --gpus 0,1 "
                             "(one GPU named: the batched call; see docs/multi_gpu.md)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="compute precision (default: float16 on gpu, float32 on cpu)")
    parser.add_argument("--entry-instances", type=int, default=1,
                        help="requests the orchestrator works on at once (each instance has its own local cache)")
    parser.add_argument("--component-instances", type=int, default=1)
    parser.add_argument("--unet-runtime", choices=RUNTIMES, default="torch",
                        help="unet runs on PyTorch, on onnxruntime (the exported ONNX graph) or as a TensorRT engine "
                             "(needs tensorrt and --device gpu; see openspeedy/export/README.md)")
    from openspeedy.export.tensorrt_engine import add_profile_arguments  # no torch: light at parse time

    add_profile_arguments(parser)
    parser.add_argument("--warmup-shapes", default=None,
                        help="video sizes FRAMESxHEIGHTxWIDTH,... the UNet and decoder compile and warm up for "
                             "(default on gpu: the entry model's default size; on cpu: none)")
    parser.add_argument("--compile-cache-dir", default="",
                        help="keep torch.compile's caches (Inductor, Triton) here: a restart skips most compilation")
    parser.add_argument("--warmup-feature-reuse", action="store_true",
                        help="warm-up also compiles the UNet paths of FEATURE_REUSE_INTERVAL (an opt-in approximation)")
    parser.add_argument("--unet-options", default=None, metavar="SPELLING",
                        help=f"the PyTorch UNet's techniques: a preset ({', '.join(PRESETS)}), then edits: "
                             "fast,-fused_residuals or fast,+inductor_options=NAME=VALUE (openspeedy/unet/options.py; "
                             "default: fast on gpu, eager on cpu)")
    parser.add_argument("--vae-decoder-compile-mode", default=None, choices=("", "default"),
                        help="torch.compile the VAE decoder network (each chunk shape compiles once; "
                             "about half its time on an H200); empty: eager (default: default on gpu, eager on cpu)")
    parser.add_argument("--compile-artifacts", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the models that compile, at their warm-up shapes, during export and ship "
                             "torch's compile caches in the repository, so a fresh replica loads instead of "
                             "compiling (default: on for --device gpu; export then needs that GPU)")
    parser.add_argument("--vae-encoder-compile-mode", default="", choices=("", "default"),
                        help="torch.compile the VAE encoder network (each image size compiles once); empty: eager")
    parser.add_argument("--max-queue-size", type=int, default=8,
                        help="requests an entry model queues; more are refused at once with UNAVAILABLE")
    parser.add_argument("--max-request-seconds", type=float, default=None,
                        help="stop a generation that runs longer, with an error (default 600, --tiny 300; 0: no "
                             "limit); a stopping "
                             "server waits this long for its requests (openspeedy serve's exit timeout)")
    parser.add_argument("--priority", action="store_true",
                        help="serve priority 1 before the default 2 (any client can send it: for trusted clients "
                             "or a front end that sets it); off: one queue in arrival order")
    parser.add_argument("--high-priority-queue-size", type=int, default=1,
                        help="with --priority: priority-1 requests queued at most (more are refused at once)")
    parser.add_argument("--no-cache", action="store_true", help="turn the encoding caches off")
    parser.add_argument("--cache-image-max-bytes", type=int, default=256 << 20)
    parser.add_argument("--cache-prompt-max-bytes", type=int, default=64 << 20)
    parser.add_argument("--cache-redis-ttl-s", type=int, default=24 * 3600,
                        help="lifetime of shared cache entries; the Redis URL is the server's: $OPENSPEEDY_REDIS_URL "
                             "or a file named by $OPENSPEEDY_REDIS_URL_FILE, never a model config")


def run(args: argparse.Namespace) -> Path:
    from openspeedy.export.repository import build_repository

    checkpoint, options = export_options(args)
    output = build_repository(checkpoint, args.output, options)
    if args.compile_artifacts if args.compile_artifacts is not None else options.device == "gpu":
        from openspeedy.export.compile_step import write_compile_artifacts

        write_compile_artifacts(output, options)
    return output


def export_options(args: argparse.Namespace):
    """The checkpoint (made here for --tiny) and the ExportOptions that the arguments ask for, with the
    defaults of their device: on a GPU, the fast path (the UNet's fast options, the compiled decoder,
    warm-up at the entry model's default size) without a flag."""
    # Imported here so that `openspeedy generate` never loads torch and diffusers.
    from openspeedy.cache import CacheSettings
    from openspeedy.export.random_checkpoint import build_tiny_checkpoint
    from openspeedy.export.repository import REFERENCE_SETTINGS, TINY_SETTINGS, ExportOptions
    from openspeedy.export.tensorrt_engine import profile_from_arguments, require_tensorrt
    from openspeedy.model_config import QueuePolicy

    unet = unet_options(args)  # a bad spelling fails before any work
    gpu = args.device == "gpu"
    if args.unet_runtime == "tensorrt":
        require_tensorrt()  # refuse before minutes of export work
    if args.tiny:
        checkpoint = build_tiny_checkpoint(args.output.parent / f"{args.output.name}_tiny_checkpoint")
        settings = TINY_SETTINGS
    else:
        checkpoint, settings = args.checkpoint, REFERENCE_SETTINGS
    if args.max_request_seconds is not None:
        if args.max_request_seconds < 0:
            raise SystemExit(f"--max-request-seconds must be 0 (no limit) or more, not {args.max_request_seconds}")
        settings = dataclasses.replace(settings, max_request_seconds=args.max_request_seconds)
    options = ExportOptions(
        device=args.device,
        gpus=tuple(int(g) for g in args.gpus.split(",") if g.strip()),
        per_gpu_components=args.per_gpu_components,
        cfg_parallel=args.cfg_parallel,
        dtype=args.dtype or ("float16" if args.device == "gpu" else "float32"),
        entry_instances=args.entry_instances,
        component_instances=args.component_instances,
        settings=settings,
        unet_runtime=args.unet_runtime,
        unet_profile=profile_from_arguments(args),
        warmup_shapes=args.warmup_shapes if args.warmup_shapes is not None else (
            f"{settings.default_num_frames}x{settings.default_height}x{settings.default_width}" if gpu else ""),
        unet_options=unet,
        # The decoder at full resolution is Inductor's kind of work: compiled, about half its time on an
        # H200. The encoder stays eager by default: it runs once per image, and the cache skips it after.
        vae_decoder_compile_mode=args.vae_decoder_compile_mode if args.vae_decoder_compile_mode is not None else (
            "default" if gpu else ""),
        vae_encoder_compile_mode=args.vae_encoder_compile_mode,
        compile_cache_dir=args.compile_cache_dir,
        queue=QueuePolicy(max_queue_size=args.max_queue_size, priority_levels=2 if args.priority else 0,
                          high_priority_queue_size=args.high_priority_queue_size),
        cache=CacheSettings(
            enabled=not args.no_cache,
            image_max_bytes=args.cache_image_max_bytes,
            prompt_max_bytes=args.cache_prompt_max_bytes,
            redis_ttl_s=args.cache_redis_ttl_s,
        ),
    )
    return checkpoint, options


def unet_options(args: argparse.Namespace):
    """``--unet-options`` as UNetOptions (``--warmup-feature-reuse`` joins them); a bad spelling exits
    with the error, which names the option it does not know."""
    from openspeedy.unet.options import parse

    if args.unet_options and args.unet_runtime != "torch":
        raise SystemExit(f"--unet-options are the torch runtime's, not {args.unet_runtime}'s")
    spelling = args.unet_options or ("fast" if args.device == "gpu" and args.unet_runtime == "torch" else "eager")
    try:
        options = parse(spelling)
    except ValueError as error:
        raise SystemExit(f"--unet-options: {error}") from None
    return dataclasses.replace(options, feature_reuse=True) if args.warmup_feature_reuse else options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="openspeedy export", description=__doc__)
    add_arguments(parser)
    print(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
