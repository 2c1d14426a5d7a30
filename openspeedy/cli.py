"""The ``openspeedy`` command: ``serve``, ``demo``, ``generate``, ``ui`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TINY_REPOSITORY = Path("build/tiny_repository")


def tiny_repository(repository: Path = DEFAULT_TINY_REPOSITORY) -> Path:
    """The tiny demo repository, built first if it is missing."""
    if not (repository / "i2vgen_xl" / "config.pbtxt").exists():
        from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
        from openspeedy.export.random_checkpoint import build_tiny_checkpoint

        print(f"building the tiny demo repository in {repository}", flush=True)
        checkpoint = build_tiny_checkpoint(repository.parent / f"{repository.name}_checkpoint")
        build_repository(checkpoint, repository, ExportOptions(settings=TINY_SETTINGS))
    return repository


def _server_options(args: argparse.Namespace):
    from openspeedy.server import ServerOptions

    repository = args.model_repository or tiny_repository()
    return ServerOptions(repository, args.host, args.http_port, args.grpc_port, args.metrics_port, args.log_verbose,
                         restart_dead_stubs=not args.no_watchdog)


def _serve(args: argparse.Namespace) -> int:
    from openspeedy.server import TritonServer, serve_forever

    return serve_forever(TritonServer(_server_options(args)))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openspeedy", description="I2VGen-XL image-to-video on Triton")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run tritonserver on a model repository (default: tiny demo)")
    demo = commands.add_parser("demo", help="serve the tiny model and write a video of the example image")
    demo.add_argument("--out", type=Path, default=Path("out/demo.mp4"))
    for command in (serve, demo):
        command.add_argument("--model-repository", type=Path, help="default: the tiny demo repository")
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--http-port", type=int, default=8000)
        command.add_argument("--grpc-port", type=int, default=8001)
        command.add_argument("--metrics-port", type=int, default=8002)
        command.add_argument("--log-verbose", type=int, default=0)
        command.add_argument("--no-watchdog", action="store_true",
                             help="do not reload a model whose python backend stub died (see openspeedy/watchdog.py)")

    from openspeedy.client import cli as client_cli
    from openspeedy.export import __main__ as export_cli  # argument definitions only; heavy imports are lazy

    generate = commands.add_parser("generate", help="generate a video through a running server")
    client_cli.add_arguments(generate)
    export = commands.add_parser("export", help="build a model repository from a checkpoint")
    export_cli.add_arguments(export)
    from openspeedy.ui import app as ui_app  # Gradio itself is imported only by `openspeedy ui`

    ui = commands.add_parser("ui", help="the web UI (Gradio) on 127.0.0.1:7860, a client of a running server")
    ui_app.add_arguments(ui)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "generate":
        return client_cli.run(args)
    if args.command == "ui":
        return ui_app.run(args)
    print(export_cli.run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
