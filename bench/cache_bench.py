"""The encoding caches on a repeated-image workload, in process: one image tried with several prompts and
seeds, with the caches on and off. Reports the time per request, the time the image work takes, and
what a hit saves. CPU with the tiny model by default; on a GPU, bench/decode_and_encode.py measures the
full-size encoders (the saving per hit).

Usage: python -m bench.cache_bench [--out bench/results/cpu] [--requests 20]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from openspeedy.cache import CacheSettings, CountingMetrics, EncodingCaches
from openspeedy.components import COMPONENT_CLASSES, load_component
from openspeedy.export.random_checkpoint import build_tiny_checkpoint
from openspeedy.local_models import LocalModels
from openspeedy.pipeline import I2VGenXL
from openspeedy.request import RequestSettings, parse_request


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cpu")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    checkpoint = build_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
    models = LocalModels({name: load_component(name, checkpoint) for name in COMPONENT_CLASSES})
    scheduler = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "PNG")
    prompts = [b"a boat", b"a boat at sunset", b"a storm over the sea", b"calm water"]

    def request(i: int):
        return parse_request({
            "IMAGE": np.array([buffer.getvalue()], dtype=object),
            "PROMPT": np.array([prompts[i % len(prompts)]], dtype=object),
            "NUM_FRAMES": np.array([8], np.int32), "HEIGHT": np.array([256], np.int32),
            "WIDTH": np.array([256], np.int32), "NUM_INFERENCE_STEPS": np.array([10], np.int32),
            "SEED": np.array([i], np.int64),
        }, RequestSettings())

    results = dict(device=f"CPU: {cpu_name()}", model="tiny random-initialized I2VGen-XL architecture",
                   date=datetime.date.today().isoformat(), requests=args.requests,
                   workload="one 640x480 PNG, 4 prompts, a new seed each request; 8 frames 256x256, 10 steps")
    # The two pipelines take turns, request by request, so a load change on the machine hits both alike.
    runs = {}
    for enabled in (False, True):
        metrics = CountingMetrics()
        caches = EncodingCaches(CacheSettings(enabled=enabled), metrics)
        runs[enabled] = (I2VGenXL(models, scheduler, 0.18125, caches=caches), metrics, [], [])
        runs[enabled][0].generate(request(0))  # warm-up (and, with the cache on, the one miss of the image)
    for i in range(1, args.requests + 1):
        req = request(i)
        for pipeline, _, times, image_times in runs.values():
            started = time.perf_counter()
            pipeline.encode_image(req)
            image_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            pipeline.generate(req)
            times.append(time.perf_counter() - started)
    for enabled, (_, metrics, times, image_times) in runs.items():
        results["cache_on" if enabled else "cache_off"] = dict(
            request_s=statistics.median(times), image_work_s=statistics.median(image_times),
            counts={f"{what}:{cache}": n for (what, cache), n in metrics.counts.items()},
        )
    saved = results["cache_off"]["request_s"] - results["cache_on"]["request_s"]
    results["saved_per_request_s"] = saved
    results["saved_fraction"] = saved / results["cache_off"]["request_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
