"""The ``openspeedy`` command: ``serve``, ``demo``, ``probe``, ``generate``, ``ui``, ``api`` and ``export``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

DEFAULT_TINY_REPOSITORY = Path("build/tiny_repository")


def tiny_repository(repository: Path = DEFAULT_TINY_REPOSITORY) -> Path:
    """The tiny demo repository, built first if it is missing."""
    if not (repository / "i2vgen_xl" / "config.pbtxt").exists():
        from openspeedy.export.random_checkpoint import build_tiny_checkpoint
        from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository

        print(f"building the tiny demo repository in {repository}", flush=True)
        checkpoint = build_tiny_checkpoint(repository.parent / f"{repository.name}_checkpoint")
        build_repository(checkpoint, repository, ExportOptions(settings=TINY_SETTINGS))
    return repository


# Seconds Triton's drain may take beyond the longest allowed request (the request's last step, the reply).
EXIT_TIMEOUT_MARGIN_S = 15
DEFAULT_EXIT_TIMEOUT_S = 30


def longest_request_seconds(repository: Path) -> float:
    """The largest ``max_request_seconds`` of the repository's entry models; 0 when one has no limit."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    limits = []
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if "max_request_seconds" in config.parameters:
            limits.append(float(config.parameters["max_request_seconds"].string_value or 0))
    return 0.0 if not limits or 0.0 in limits else max(limits)


def exit_timeout_seconds(args: argparse.Namespace, repository: Path) -> int:
    """--exit-timeout-secs if given; else the longest allowed request plus a margin, so that a stop lets
    every video in flight finish."""
    if args.exit_timeout_secs is not None:
        return args.exit_timeout_secs
    longest = longest_request_seconds(repository)
    return math.ceil(longest) + EXIT_TIMEOUT_MARGIN_S if longest else DEFAULT_EXIT_TIMEOUT_S


def _server_options(args: argparse.Namespace):
    from openspeedy.server import ServerOptions

    repository = args.model_repository or tiny_repository()
    if not any(Path(repository).glob("*/config.pbtxt")):
        raise SystemExit(f"openspeedy: no model in {repository}: mount a repository built by 'openspeedy export' "
                         "there, or build the image with --build-arg MODEL_SOURCE=tiny|checkpoint (docker/README.md)")
    extra = {} if args.cuda_memory_pool_bytes is None else {"cuda_memory_pool_bytes": args.cuda_memory_pool_bytes}
    extra.update(max_body_bytes=args.max_body_bytes, max_crashes=args.max_crashes, crash_window_s=args.crash_window_s)
    return ServerOptions(repository, args.host, args.http_port, args.grpc_port, args.metrics_port, args.log_verbose,
                         restart_dead_stubs=not args.no_watchdog, exit_timeout_s=exit_timeout_seconds(args, repository),
                         triton_root=args.triton_root, extra_args=list(args.triton_args), **extra)


def _serve(args: argparse.Namespace) -> int:
    from openspeedy.server import TritonServer, serve_forever

    server = TritonServer(_server_options(args))
    print(f"openspeedy: tritonserver {' '.join(server.command_line_without_key())}", flush=True)
    return serve_forever(server)


def _env(name: str, default, kind=str):
    """A flag's default from $OPENSPEEDY_<NAME>: the container and the chart configure the launcher that way."""
    value = os.environ.get(f"OPENSPEEDY_{name}")
    return default if value in (None, "") else kind(value)


def _demo(args: argparse.Namespace) -> int:
    """Serves the tiny model, generates a video from the bundled example image, checks and writes it."""
    from openspeedy.client import Client, example_image
    from openspeedy.server import TritonServer
    from openspeedy.video import decode_video

    request = dict(num_frames=16, height=128, width=192, num_inference_steps=20, seed=0)
    with TritonServer(_server_options(args), log_path=Path("out/demo-server.log")) as server:
        with Client(server.grpc_url) as client:
            video = client.generate(example_image(), "a lighthouse by the sea, waves rolling in", frames=False,
                                    mp4=True, **request)
    frames = decode_video(video.mp4)
    expected = (request["num_frames"], request["height"], request["width"], 3)
    if frames.shape != expected:
        print(f"demo video has shape {frames.shape}, expected {expected}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(video.mp4)
    print(f"wrote {args.out}: {expected[0]} frames of {expected[2]}x{expected[1]}")
    print("To try it in a browser: `openspeedy serve` in one terminal, `openspeedy ui` in another "
          "(needs the ui extra: pip install 'openspeedy[ui]'), then open http://127.0.0.1:7860")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openspeedy", description="I2VGen-XL image-to-video on Triton")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run tritonserver on a model repository (default: tiny demo)")
    demo = commands.add_parser("demo", help="serve the tiny model and write a video of the example image")
    demo.add_argument("--out", type=Path, default=Path("out/demo.mp4"))
    # Each default comes from $OPENSPEEDY_<FLAG> when set (e.g. OPENSPEEDY_HTTP_PORT), as in the container.
    for command in (serve, demo):
        command.add_argument("--model-repository", type=Path, default=_env("MODEL_REPOSITORY", None, Path),
                             help="default: $OPENSPEEDY_MODEL_REPOSITORY, else the tiny demo repository")
        command.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to listen on")
        command.add_argument("--http-port", type=int, default=_env("HTTP_PORT", 8000, int))
        command.add_argument("--grpc-port", type=int, default=_env("GRPC_PORT", 8001, int))
        command.add_argument("--metrics-port", type=int, default=_env("METRICS_PORT", 8002, int))
        command.add_argument("--log-verbose", type=int, default=_env("LOG_VERBOSE", 0, int))
        command.add_argument("--exit-timeout-secs", type=int, default=_env("EXIT_TIMEOUT_SECS", None, int),
                             help="how long a stop waits for requests in flight (default: the repository's longest "
                                  f"max_request_seconds + {EXIT_TIMEOUT_MARGIN_S}, or {DEFAULT_EXIT_TIMEOUT_S} "
                                  "without a limit)")
        command.add_argument("--cuda-memory-pool-bytes", type=int, default=_env("CUDA_POOL_BYTES", None, int),
                             help="per-GPU CUDA pool of the python backend (default 256 MiB)")
        command.add_argument("--triton-root", type=Path, default=_env("TRITON_ROOT", None, Path),
                             help="the Triton installation, e.g. /opt/tritonserver (default: $OPENSPEEDY_TRITON_ROOT, "
                                  "else /opt/tritonserver if present, else the nvidia-pytriton wheel's server)")
        command.add_argument("--no-watchdog", action="store_true",
                             help="do not reload a model whose python backend stub died (see openspeedy/watchdog.py)")
        command.add_argument("--max-body-bytes", type=int, default=_env("MAX_BODY_BYTES", 64 * 2**20, int),
                             help="largest HTTP request body the HTTP guard forwards, counted after undoing chunked "
                                  "framing and gzip/deflate (default 64 MiB; docs/security.md)")
        command.add_argument("--max-crashes", type=int, default=_env("MAX_CRASHES", 3, int),
                             help="tritonserver deaths within --crash-window-s after which the launcher exits 1 "
                                  "instead of restarting it (default 3)")
        command.add_argument("--crash-window-s", type=float, default=_env("CRASH_WINDOW_S", 300.0, float))
        command.set_defaults(triton_args=[])
    serve.epilog = "Arguments after '--' go to tritonserver as they are, after the launcher's own flags."

    from openspeedy import probe as probe_cli

    probe = commands.add_parser("probe", help="exit 0 when the server and every model of the repository are ready")
    probe_cli.add_arguments(probe)

    from openspeedy.client import cli as client_cli
    from openspeedy.export import __main__ as export_cli  # argument definitions only; heavy imports are lazy

    generate = commands.add_parser("generate", help="generate a video through a running server")
    client_cli.add_arguments(generate)
    export = commands.add_parser("export", help="build a model repository from a checkpoint")
    export_cli.add_arguments(export)
    from openspeedy.ui import app as ui_app  # Gradio itself is imported only by `openspeedy ui`

    ui = commands.add_parser("ui", help="the web UI (Gradio) on 127.0.0.1:7860, a client of a running server")
    ui_app.add_arguments(ui)
    from openspeedy.api import command as api_command  # FastAPI itself is imported only by `openspeedy api`

    api = commands.add_parser("api", help="the OpenAI-compatible video job API (/v1/videos) on 127.0.0.1:8080")
    api_command.add_arguments(api)
    return parser


def main(argv: list[str] | None = None) -> int:
    from openspeedy import probe as probe_cli
    from openspeedy.client import cli as client_cli
    from openspeedy.export import __main__ as export_cli
    from openspeedy.ui import app as ui_app

    argv = list(sys.argv[1:] if argv is None else argv)
    triton_args: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # what follows "--" goes to tritonserver as it is
        split = argv.index("--")
        argv, triton_args = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        args.triton_args = triton_args
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "probe":
        return probe_cli.run(args)
    if args.command == "generate":
        return client_cli.run(args)
    if args.command == "ui":
        return ui_app.run(args)
    if args.command == "api":
        from openspeedy.api import command as api_command

        return api_command.run(args)
    print(export_cli.run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
