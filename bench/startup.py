"""Start-up of the served UNet: seconds from a new process to a UNet that has compiled and captured its
configured shape (what a model load with warm-up shapes costs). Runs: ``cold``, Inductor's on-disk cache
empty (a first start; it also writes the compile artifacts that export ships, openspeedy.compile_artifacts);
``warm``, the cache kept from an earlier start (a restart with the cache on a volume); ``artifacts``, the
cache empty again but the artifacts from the cold start beside the weights (a fresh replica of an exported
repository); ``eager``, the same load without compiling (what reading the weights and one call cost).

Usage: python -m bench.startup --out DIR [--variant fast] [--shape 16x512x512] [--cache-dir DIR]
       [--runs cold,warm,artifacts]
``--variant`` is a spelling of the UNet's options (openspeedy/unet/options.py): ``fast,-cuda_graphs``.
Each start runs in its own process, so nothing but the on-disk cache and the artifacts carry over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_CHECKPOINT, Results, count_files
from openspeedy import compile_artifacts
from openspeedy.unet.options import parse

START = """
import json, torch
from pathlib import Path
from openspeedy import compile_artifacts
from openspeedy.components import load_component
from openspeedy.unet.options import parse
options = dict(parse({variant!r}).as_parameters(), warmup_shapes={shape!r}, compile_cache_dir={cache!r})
with compile_artifacts.recording():
    load_component("unet", {checkpoint!r}, "cuda", "float16", options)
    torch.cuda.synchronize()
    saved = compile_artifacts.save(Path({save!r}), torch.device("cuda")) if {save!r} else 0
print(json.dumps(dict(compile_artifacts.compile_counts(), saved=saved)))
"""


def start(checkpoint: Path, variant: str, shape: str, cache: Path, save: str = "") -> dict:
    code = START.format(variant=variant, shape=shape, cache=str(cache), checkpoint=str(checkpoint), save=save)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return dict(ready_s=time.perf_counter() - started, **json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--variant", default="fast")
    parser.add_argument("--shape", default="16x512x512")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/openspeedy-inductor"))
    parser.add_argument("--artifacts-dir", type=Path, default=Path("/tmp/openspeedy-artifacts"))
    parser.add_argument("--runs", default="cold,warm,artifacts", help="of eager, cold, warm, artifacts")
    args = parser.parse_args()
    parse(args.variant)  # a bad spelling fails here, not in each start's process
    results = Results(args.out / "startup.json", variant=args.variant, shape=args.shape)
    shipped = [args.checkpoint / name for name in (compile_artifacts.ARTIFACTS_FILE, compile_artifacts.HEADER_FILE)]
    for run in filter(None, args.runs.split(",")):
        for file in shipped:  # beside the weights only for the run that measures them
            file.unlink(missing_ok=True)
        if run in ("cold", "artifacts"):
            shutil.rmtree(args.cache_dir, ignore_errors=True)
        if run == "artifacts":
            for file in shipped:
                shutil.copy2(args.artifacts_dir / file.name, file)
        save = ""
        if run == "cold":
            args.artifacts_dir.mkdir(parents=True, exist_ok=True)
            save = str(args.artifacts_dir)
        cached = count_files(args.cache_dir)
        variant = "eager" if run == "eager" else args.variant
        row = start(args.checkpoint, variant, args.shape, args.cache_dir, save)
        results.append("starts", dict(run=run, cache_files_before=cached, **row))
    for file in shipped:
        file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
