"""Start-up of the served UNet: seconds from a new process to a UNet that has compiled and captured its
configured shape (what a model load with warm-up shapes costs), with Inductor's on-disk cache empty
(a first start) and kept from an earlier start (a restart with the cache on a volume).

Usage: python -m bench.startup --out DIR [--variant fast] [--shape 16x512x512] [--cache-dir DIR] [--runs cold,warm]
``--variant`` is a spelling of the UNet's options (openspeedy/unet/options.py): ``fast,-cuda_graphs``.
Each start runs in its own process, so nothing but the on-disk cache carries over.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_CHECKPOINT, Results
from openspeedy.unet.options import parse

START = """
import time, torch
from openspeedy.components import load_component
from openspeedy.unet.options import parse
options = dict(parse({variant!r}).as_parameters(), warmup_shapes={shape!r}, compile_cache_dir={cache!r})
load_component("unet", {checkpoint!r}, "cuda", "float16", options)
torch.cuda.synchronize()
"""


def start(checkpoint: Path, variant: str, shape: str, cache: Path) -> float:
    code = START.format(variant=variant, shape=shape, cache=str(cache), checkpoint=str(checkpoint))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--variant", default="fast")
    parser.add_argument("--shape", default="16x512x512")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/openspeedy-inductor"))
    parser.add_argument("--runs", default="cold,warm", help="cold: empty the cache first; warm: keep it")
    args = parser.parse_args()
    parse(args.variant)  # a bad spelling fails here, not in each start's process
    results = Results(args.out / "startup.json", variant=args.variant, shape=args.shape)
    for run in filter(None, args.runs.split(",")):
        if run == "cold":
            shutil.rmtree(args.cache_dir, ignore_errors=True)
        cached = sum(1 for f in args.cache_dir.rglob("*") if f.is_file()) if args.cache_dir.exists() else 0
        ready_s = start(args.checkpoint, args.variant, args.shape, args.cache_dir)
        results.append("starts", dict(run=run, cache_files_before=cached, ready_s=ready_s))


if __name__ == "__main__":
    main()
