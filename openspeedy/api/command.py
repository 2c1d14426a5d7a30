"""``openspeedy api``: its flags (imported by every ``openspeedy`` command, so nothing heavy at the top)
and its start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

KEYS_FILE_ENV = "OPENSPEEDY_API_KEYS_FILE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; beyond loopback only with keys")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--server", default="127.0.0.1:8001", help="the Triton server's gRPC address")
    parser.add_argument("--model", default="i2vgen_xl_stream", help="the streaming model the jobs run on")
    parser.add_argument("--keys-file", type=Path, default=os.environ.get(KEYS_FILE_ENV) or None,
                        help=f"API keys, one per line (default: ${KEYS_FILE_ENV}); without keys the API listens "
                             "on loopback only")
    parser.add_argument("--max-jobs-per-key", type=int, default=4, help="videos a key may have queued or running")
    parser.add_argument("--keep-s", type=int, default=3600, help="how long a finished video is kept")
    parser.add_argument("--concurrency", type=int, default=2, help="videos this process runs at once")
    parser.add_argument("--max-upload-bytes", type=int, default=33 * 1024 * 1024,
                        help="largest request body (the image and the fields)")
    parser.add_argument("--lease-s", type=int, default=30,
                        help="with Redis: a running video whose process stopped renewing it for this long is "
                             "queued again")


def run(args: argparse.Namespace) -> int:
    from openspeedy.api.keys import Keys, is_loopback, read_keys

    keys = Keys(read_keys(args.keys_file) if args.keys_file else [])
    if not keys.required and not is_loopback(args.host):
        print(f"openspeedy api: refusing to listen on {args.host} without API keys: give --keys-file "
              f"(or ${KEYS_FILE_ENV}), or listen on 127.0.0.1", file=sys.stderr)
        return 2

    import uvicorn

    from openspeedy.api.app import ApiOptions, create_app
    from openspeedy.api.jobs import MemoryJobs, RedisJobs
    from openspeedy.cache import redis_url_from_environment

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    redis_url = redis_url_from_environment()
    jobs = RedisJobs(redis_url, lease_s=args.lease_s) if redis_url else MemoryJobs()
    options = ApiOptions(server_url=args.server, model=args.model, keys=keys, max_jobs_per_key=args.max_jobs_per_key,
                         keep_s=args.keep_s, concurrency=args.concurrency, max_upload_bytes=args.max_upload_bytes)
    where = "Redis" if redis_url else "this process (no Redis configured: jobs end with it)"
    print(f"OpenSpeedy video job API on http://{args.host}:{args.port}/v1/videos (Triton gRPC {args.server}, "
          f"model {args.model}, jobs in {where}, {'API keys required' if keys.required else 'no API keys'})",
          flush=True)
    # uvicorn stops gracefully on SIGTERM (the jobs running here go back to the queue), then raises the
    # signal again; a stop the platform asked for is a clean exit, status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(create_app(jobs, options), host=args.host, port=args.port, log_level="info")
    return 0
