"""``openspeedy generate``: one image and a prompt in, an MP4 or GIF out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from openspeedy.client.api import Client, GenerationError, GenerationTimeout, Progress, RetryPolicy

# What a shell reports for a command ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, required=True, help="PNG, JPEG, WebP or BMP file")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 or .gif")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--url", help="server address (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)")
    parser.add_argument("--model", help="entry model (default: i2vgen_xl_stream when streaming, else i2vgen_xl)")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--num-inference-steps", "--steps", dest="num_inference_steps", type=int)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--target-fps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--decode-chunk-size", type=int)
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "END"),
                        help="opt-in approximation: guidance only on this fraction of the steps, e.g. 0 0.6")
    parser.add_argument("--feature-reuse-interval", type=int, metavar="N",
                        help="opt-in approximation: the UNet's deep features recomputed every N steps")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the video (retries included)")
    parser.add_argument("--priority", type=int, default=0,
                        help="1: before default requests (2) in the queue, where the server was exported with "
                             "--priority (else ignored)")
    parser.add_argument("--retries", type=int, default=RetryPolicy.attempts - 1,
                        help="times to send again a request the server refused as busy (UNAVAILABLE)")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (gRPC streaming model); default: on over gRPC")


def _say_retry(attempt: int, wait_s: float, error: GenerationError) -> None:
    print(f"attempt {attempt} refused, retrying in {wait_s:.1f} s: {error}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        print(f"--out must end in .mp4 or .gif, got {args.out}", file=sys.stderr)
        return 2
    if not args.image.is_file():
        print(f"--image {args.image}: no such file", file=sys.stderr)
        return 2
    options = {
        key: getattr(args, key)
        for key in ("negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                    "guidance_scale", "target_fps", "seed", "decode_chunk_size", "guidance_interval",
                    "feature_reuse_interval")
    }
    stream = args.protocol == "grpc" if args.stream is None else args.stream
    if stream and args.protocol != "grpc":
        print("--stream needs --protocol grpc (Triton streams over gRPC only)", file=sys.stderr)
        return 2
    started = time.monotonic()
    wanted = dict(frames=suffix == ".gif", mp4=suffix == ".mp4", priority=args.priority, model=args.model)
    retry = RetryPolicy(attempts=max(0, args.retries) + 1)
    bar = None
    if args.protocol == "http":
        _quiet_interrupts_in_gevent()
    try:
        with Client(args.url, args.protocol, timeout_s=args.timeout, retry=retry, on_retry=_say_retry) as client:
            if stream:

                told = []  # the place last printed while the request waited on the server

                def progress(update: Progress) -> None:
                    nonlocal bar
                    if update.waiting:
                        if told[-1:] != [update.ahead]:  # a line per place, not per refresh of its estimate
                            told.append(update.ahead)
                            print(update.place(), file=sys.stderr, flush=True)
                        return
                    if bar is None:  # from the first step on: retry messages before it keep their own lines
                        bar = tqdm(desc="denoising", unit="step", total=update.total, file=sys.stderr)
                    bar.update(update.step - bar.n)

                video = client.generate_stream(args.image, args.prompt, on_progress=progress, **wanted, **options)
                _close(bar)
            else:
                video = client.generate(args.image, args.prompt, **wanted, **options)
            fps = args.target_fps or int(client.model_parameters(args.model).get("default_target_fps", 16))
    except KeyboardInterrupt:
        # The client's wait is cancelled with the stream (or call): the server stops within one step.
        _close(bar)
        where = "the server stops it within one step" if args.protocol == "grpc" else "over HTTP the server finishes it"
        print(f"interrupted: request cancelled ({where})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except GenerationTimeout as error:
        _close(bar)
        print(f"timed out: {error}", file=sys.stderr)
        return 1
    except GenerationError as error:
        _close(bar)
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        args.out.write_bytes(video.mp4)
    else:
        from openspeedy.video import encode_gif

        args.out.write_bytes(encode_gif(video.frames, fps))
    print(f"wrote {args.out} in {time.monotonic() - started:.1f} s")
    return 0


def _quiet_interrupts_in_gevent() -> None:
    """The HTTP client waits in gevent's hub, which prints a Ctrl-C's KeyboardInterrupt as an error of its
    own before passing it on to the command; the command says what happened in one line instead."""
    import gevent

    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def _close(bar) -> None:
    if bar is not None:
        bar.close()
