"""The ``openspeedy`` command: ``serve``, ``generate`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TINY_REPOSITORY = Path("build/tiny_repository")


def _serve(args: argparse.Namespace) -> int:
    from openspeedy.server import ServerOptions, TritonServer, serve_forever

    repository = args.model_repository
    if repository is None:
        repository = DEFAULT_TINY_REPOSITORY
        if not (repository / "i2vgen_xl" / "config.pbtxt").exists():
            from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, build_repository
            from openspeedy.export.tiny import build_tiny_checkpoint

            print(f"building the tiny demo repository in {repository}", flush=True)
            checkpoint = build_tiny_checkpoint(repository.parent / "tiny_checkpoint")
            build_repository(checkpoint, repository, ExportOptions(settings=TINY_SETTINGS))
    options = ServerOptions(repository, args.host, args.http_port, args.grpc_port, args.metrics_port,
                            args.log_verbose)
    return serve_forever(TritonServer(options))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openspeedy", description="I2VGen-XL image-to-video on Triton")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run tritonserver on a model repository (default: tiny demo)")
    serve.add_argument("--model-repository", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-verbose", type=int, default=0)

    from openspeedy.client import cli as client_cli
    from openspeedy.export import __main__ as export_cli

    generate = commands.add_parser("generate", help="generate a video through a running server")
    client_cli.add_arguments(generate)
    export = commands.add_parser("export", help="build a model repository from a checkpoint")
    export_cli.add_arguments(export)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "generate":
        return client_cli.run(args)
    print(export_cli.run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
