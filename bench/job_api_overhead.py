"""What the job API adds to a video: the same request through `openspeedy api` with the official `openai`
client (create, its poll helper, download) and straight from the stream model over gRPC
(openspeedy.client, with the live previews the API's workers ask for), alternately, against one
tritonserver. The difference is the API's HTTP hops, its job store, its worker's stream and the polling.

Usage: python -m bench.job_api_overhead --out DIR (--server HOST:PORT | --tiny) [--size 16x512x512]
       [--steps 50] [--repeats 3]
Starts `openspeedy api` on a free loopback port (no keys: loopback only) in front of the server's gRPC
address. ``--tiny`` builds the tiny random repository and serves it first: a CPU check of the harness
and of the API's fixed cost, where a video takes about a second. Writes DIR/job_api_overhead.json after
every measurement.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import openai
from PIL import Image

from bench.common import Results
from openspeedy.api.worker import PREVIEW_INTERVAL
from openspeedy.client import Client
from openspeedy.model_parameters import parse_shapes
from openspeedy.server import ServerOptions, TritonServer, free_loopback_port
from openspeedy.video import decode_video

PROMPT = "a lighthouse by the sea"
TINY_NOTE = ("the tiny random repository on a CPU: a check of the harness and of the API's fixed cost, "
             "not a speed figure")
# The openai client marks its video methods deprecated for OpenAI's own service; the protocol is what is used.
warnings.filterwarnings("ignore", message="The Sora API", category=DeprecationWarning)


@contextmanager
def tiny_server(directory: Path) -> Iterator[str]:
    """The tiny random repository served on free loopback ports; yields its gRPC address."""
    from openspeedy.export.__main__ import main as export_main

    repository = directory / "models"
    export_main(["--tiny", "--output", str(repository)])
    options = ServerOptions(repository, http_port=free_loopback_port(), grpc_port=free_loopback_port(),
                            metrics_port=free_loopback_port())
    server = TritonServer(options, log_path=directory / "triton.log").start()
    try:
        yield server.grpc_url
    finally:
        server.stop()


@contextmanager
def job_api(grpc_url: str, log: Path) -> Iterator[str]:
    """`openspeedy api` in front of ``grpc_url``; yields its base URL once it answers."""
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "openspeedy.cli", "api", "--port", str(port),
                                    "--server", grpc_url], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"openspeedy api exited with {process.returncode}: see {log}")
            try:
                urllib.request.urlopen(f"{url}/openapi.json", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"openspeedy api did not answer within 180 s: see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="a running tritonserver's gRPC address HOST:PORT")
    source.add_argument("--tiny", action="store_true", help="serve the tiny random repository first")
    parser.add_argument("--size", default="16x512x512", help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ((frames, height, width),) = parse_shapes(args.size)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    image = buffer.getvalue()
    options = dict(num_frames=frames, num_inference_steps=args.steps, seed=7)
    preview_interval = min(PREVIEW_INTERVAL, args.steps)  # what the API's workers ask for
    results = Results(args.out / "job_api_overhead.json", size=args.size, steps=args.steps,
                      preview_interval=preview_interval,
                      server="tiny random repository" if args.tiny else args.server,
                      **({"note": TINY_NOTE} if args.tiny else {}))

    with ExitStack() as stack:
        temporary = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="openspeedy-job-api-")))
        grpc_url = stack.enter_context(tiny_server(temporary)) if args.tiny else args.server
        api_url = stack.enter_context(job_api(grpc_url, temporary / "api.log"))
        direct = stack.enter_context(Client(grpc_url))
        jobs = openai.OpenAI(api_key="unused", base_url=f"{api_url}/v1", max_retries=0, timeout=3600)

        def through_stream() -> bytes:
            return direct.generate_stream(image, PROMPT, frames=False, mp4=True, height=height, width=width,
                                          preview_interval=preview_interval, **options).mp4

        def through_job_api() -> bytes:
            job = jobs.videos.create_and_poll(prompt=PROMPT, input_reference=("in.png", image, "image/png"),
                                              size=f"{width}x{height}", extra_body=options)
            if job.status != "completed":
                raise RuntimeError(f"job {job.id} ended {job.status}: {job.error}")
            mp4 = jobs.videos.download_content(job.id).read()
            jobs.videos.delete(job.id)
            return mp4

        through_stream(), through_job_api()  # warm-up: compiles, caches, the API's first connection
        for repeat in range(args.repeats):
            row = {"repeat": repeat}
            videos = {}
            for path, run in (("stream_s", through_stream), ("job_api_s", through_job_api)):
                started = time.perf_counter()
                videos[path] = run()
                row[path] = time.perf_counter() - started
            row["same_video"] = bool(np.array_equal(*(decode_video(mp4) for mp4 in videos.values())))
            results.append("runs", row)
        runs = results["runs"]
        stream, api = (statistics.median(row[key] for row in runs) for key in ("stream_s", "job_api_s"))
        results["median_stream_s"], results["median_job_api_s"] = stream, api
        results["overhead_s"], results["overhead"] = api - stream, api / stream - 1
        results["same_video"] = all(row["same_video"] for row in runs)


if __name__ == "__main__":
    main()
