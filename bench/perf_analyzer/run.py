"""perf_analyzer harness for the ``i2vgen_xl`` contract: input data, HTTP and gRPC, streaming, per-model time.

What it does:

1. writes perf_analyzer ``--input-data`` JSON for the public contract: IMAGE is a PNG that this script
   draws, sent as BYTES through ``{"b64": ...}``; PROMPT, NEGATIVE_PROMPT and every optional scalar are
   given, with small NUM_FRAMES/HEIGHT/WIDTH/NUM_INFERENCE_STEPS by default so the tiny model answers fast;
2. finds ``perf_analyzer`` (the ``tritonclient==2.51.0`` wheel's ``bin/perf_analyzer``) and the shared
   libraries it links that the system lacks (``libcudart.so.12`` from the pip package
   ``nvidia-cuda-runtime-cu12``; ``libb64.so.0d`` from Debian's ``libb64-0d``);
3. runs it per protocol (``grpc``, ``http``; ``stream`` = gRPC ``--streaming`` against
   ``i2vgen_xl_stream``, skipped with a message when the server has no such model) and per concurrency
   of the sweep, with ``--bls-composing-models`` so the components' server-side times are reported;
4. parses perf_analyzer's CSV (``-f``, ``--verbose-csv``: client-side latency percentiles and
   throughput) and its console report (server-side and per-composing-model times, which the CSV lacks)
   into ``<out>/<name>.json`` and a markdown table ``<out>/<name>.md`` naming the device and the date.

Where the server comes from: ``--grpc-url/--http-url`` (a running server), ``--repository DIR`` (starts
``openspeedy.server.TritonServer`` on free loopback ports and stops it at the end) or ``--tiny`` (builds
the tiny random repository in a temporary folder first).

Install what perf_analyzer needs on Debian 12 / Python 3.11::

    apt-get install -y libb64-0d
    .venv/bin/pip install nvidia-cuda-runtime-cu12==12.6.77

A perf_analyzer detail worth knowing: for a BYTES input, ``{"b64": ...}`` must hold Triton's serialized
BYTES tensor (each element as a 4-byte little-endian length and then its bytes), not the raw file:
perf_analyzer sends the decoded bytes as the tensor's raw contents. ``serialized_bytes`` builds that.

Usage: python -m bench.perf_analyzer.run --tiny [--protocols grpc,http,stream] [--concurrency 1,2,4]
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import io
import json
import os
import platform
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[2]
ENTRY_MODEL = "i2vgen_xl"
STREAM_MODEL = "i2vgen_xl_stream"
COMPOSING_MODELS = ("text_encoder", "image_encoder", "vae_encoder", "unet", "vae_decoder")
PROTOCOLS = ("grpc", "http", "stream")


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer or one of its shared libraries is missing; the message says what to install."""


# ----------------------------------------------------------------------------------------------- finding it


def find_perf_analyzer() -> Path | None:
    """``perf_analyzer`` next to this interpreter (the venv's bin), else on PATH."""
    candidates = [Path(sys.executable).parent / "perf_analyzer", ROOT / ".venv" / "bin" / "perf_analyzer"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def cuda_runtime_lib() -> Path | None:
    """``site-packages/nvidia/cuda_runtime/lib`` of pip's nvidia-cuda-runtime-cu12, if installed."""
    try:
        import nvidia.cuda_runtime  # namespace package: no __file__
    except ImportError:
        return None
    for folder in getattr(nvidia.cuda_runtime, "__path__", []):
        lib = Path(folder) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


INSTALL_HINTS = {
    "libb64.so.0d": "apt-get install -y libb64-0d",
    "libcudart.so.12": "pip install nvidia-cuda-runtime-cu12==12.6.77",
}


def perf_analyzer_environment() -> tuple[Path, dict[str, str]]:
    """The binary and an environment it runs in; raises PerfAnalyzerUnavailable saying what is missing."""
    binary = find_perf_analyzer()
    if binary is None:
        raise PerfAnalyzerUnavailable("perf_analyzer not found: pip install 'tritonclient[all]==2.51.0'")
    env = dict(os.environ)
    lib = cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    if shutil.which("ldd"):
        result = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, timeout=30)
        missing = sorted({line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line})
        if missing:
            hints = "; ".join(f"{name}: {INSTALL_HINTS.get(name, 'unknown package')}" for name in missing)
            raise PerfAnalyzerUnavailable(f"{binary} cannot load {', '.join(missing)} ({hints})")
    return binary, env


# ----------------------------------------------------------------------------------------------- input data


def make_png(width: int = 48, height: int = 32, seed: int = 0) -> bytes:
    """A deterministic PNG per seed: a colour gradient with noise (no files needed)."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def serialized_bytes(*elements: bytes) -> bytes:
    """Triton's serialization of a BYTES tensor: per element a uint32 little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def input_data(
    entries: int = 1,
    salt: int = 0,
    prompt: str = "a red fox running through snow",
    negative_prompt: str = "",
    num_frames: int = 2,
    height: int = 32,
    width: int = 32,
    num_inference_steps: int = 2,
    guidance_scale: float = 9.0,
    target_fps: int = 8,
    seed: int = 1,
    decode_chunk_size: int = 0,
) -> dict[str, Any]:
    """perf_analyzer ``--input-data`` content: ``entries`` requests carrying every input of the contract.

    With several entries each has its own image and prompt (numbered from ``salt``), so that the
    server's latent and prompt caches miss and every composing model runs in every measurement window
    (perf_analyzer 2.51 fails a window with "failed to find the requested model version" when a model
    named in --bls-composing-models was not called during it). perf_analyzer walks the entries in order.
    """
    data = []
    for index in range(entries):
        number = salt + index
        data.append({
            "IMAGE": {"b64": base64.b64encode(serialized_bytes(make_png(seed=number))).decode("ascii")},
            "PROMPT": [prompt if entries == 1 else f"{prompt} #{number}"],
            "NEGATIVE_PROMPT": [negative_prompt],
            "NUM_FRAMES": [num_frames],
            "HEIGHT": [height],
            "WIDTH": [width],
            "NUM_INFERENCE_STEPS": [num_inference_steps],
            "GUIDANCE_SCALE": [guidance_scale],
            "TARGET_FPS": [target_fps],
            "SEED": [seed],
            "DECODE_CHUNK_SIZE": [decode_chunk_size],
            # The opt-in approximations at their defaults (off): the exact video.
            "GUIDANCE_INTERVAL": [0.0, 1.0],
            "FEATURE_REUSE_INTERVAL": [1],
        })
    return {"data": data}


def write_input_data(path: Path, entries: int = 1, salt: int = 0, **settings: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(entries, salt, **settings)))
    return path


def entries_needed(concurrency: int, measurement_request_count: int, max_trials: int) -> int:
    """Distinct requests that outlast one perf_analyzer run: (trials + warm-up) windows of N or c requests."""
    return (max_trials + 2) * (max(measurement_request_count, concurrency) + concurrency)


# ----------------------------------------------------------------------------------------------- running it


def perf_analyzer_command(
    binary: Path,
    protocol: str,
    url: str,
    input_path: Path,
    concurrency: int,
    csv_path: Path,
    measurement_request_count: int = 3,
    stability_percentage: float = 100.0,
    max_trials: int = 10,
    composing_models: Iterable[str] = COMPOSING_MODELS,
    asynchronous: bool = False,
) -> list[str]:
    """One perf_analyzer run: one protocol, one concurrency; count windows keep slow requests bounded."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    command = [
        str(binary),
        "-m", STREAM_MODEL if protocol == "stream" else ENTRY_MODEL,
        "-i", "http" if protocol == "http" else "grpc",
        "-u", url,
        f"--input-data={input_path}",
        f"--concurrency-range={concurrency}",
        "--measurement-mode=count_windows",
        f"--measurement-request-count={measurement_request_count}",
        f"--stability-percentage={stability_percentage}",
        f"--max-trials={max_trials}",
        "-f", str(csv_path),
        "--verbose-csv",
    ]
    composing = ",".join(composing_models)
    if composing:
        command.append(f"--bls-composing-models={composing}")
    if protocol == "stream":
        command.append("--streaming")
    elif asynchronous:
        command.append("--async")
    return command


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def parse_csv(path: Path) -> list[dict[str, float | int]]:
    """perf_analyzer's ``-f`` CSV: one row per concurrency (columns in microseconds), sorted by concurrency."""
    with open(path, newline="") as handle:
        rows = [{key.strip(): _number(value) for key, value in row.items() if key and value not in (None, "")}
                for row in csv.DictReader(handle)]
    return sorted(rows, key=lambda row: row.get("Concurrency", 0))


_SERVER_LATENCY = re.compile(r"Avg request latency: (\d+) usec \((.*)\)")
_PART = re.compile(r"(overhead|queue|compute input|compute infer|compute output|compute) (\d+) usec")
_COUNT = re.compile(r"^(Inference count|Execution count|Successful request count|Request count): (\d+)$")
_THROUGHPUT = re.compile(r"^Throughput: ([\d.]+) infer/sec")
_COMPOSING_HEADER = re.compile(r"^(\S+), version: (\S+)$")
_KEYS = {
    "Inference count": "inference_count",
    "Execution count": "execution_count",
    "Successful request count": "success_count",
    "Request count": "request_count",
}


def _server_block(line: str, block: dict[str, Any]) -> None:
    count = _COUNT.match(line)
    if count:
        block[_KEYS[count.group(1)]] = int(count.group(2))
        return
    latency = _SERVER_LATENCY.search(line)
    if latency:
        block["avg_request_latency_us"] = int(latency.group(1))
        for part, value in _PART.findall(latency.group(2)):
            block[part.replace(" ", "_") + "_us"] = int(value)


def parse_console(text: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's console report -> {concurrency: {"client", "server", "composing": {model: stats}}}."""
    results: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    section = None
    block: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        header = re.match(r"^Request concurrency: (\d+)$", line)
        if header:
            current = results.setdefault(int(header.group(1)), {"client": {}, "server": {}, "composing": {}})
            section, block = None, None
            continue
        if current is None or not line:
            continue
        if line.startswith("Inferences/Second vs."):
            current = None
            continue
        if line == "Client:":
            section, block = "client", current["client"]
        elif line == "Server:":
            section, block = "server", current["server"]
        elif line == "Composing models:":
            section, block = "composing", None
        elif section == "composing" and _COMPOSING_HEADER.match(line):
            name = _COMPOSING_HEADER.match(line).group(1)
            block = current["composing"].setdefault(name, {})
        elif block is not None:
            throughput = _THROUGHPUT.match(line)
            if throughput:
                block["throughput_infer_per_s"] = float(throughput.group(1))
            else:
                _server_block(line, block)
    return results


def server_has_model(protocol: str, url: str, model: str) -> bool:
    """Whether the server at ``url`` has ``model`` loaded and ready."""
    if protocol == "http":
        import tritonclient.http as triton
    else:
        import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url)
    try:
        return bool(client.is_model_ready(model))
    except InferenceServerException:
        return False
    finally:
        client.close()


def run_one(
    binary: Path,
    env: dict[str, str],
    protocol: str,
    url: str,
    input_path: Path,
    concurrency: int,
    work_dir: Path,
    timeout_s: float = 600.0,
    **options: Any,
) -> dict[str, Any]:
    """Runs perf_analyzer once; returns the parsed CSV row and console report, or the error it gave."""
    csv_path = work_dir / f"{protocol}-c{concurrency}.csv"
    csv_path.unlink(missing_ok=True)
    command = perf_analyzer_command(binary, protocol, url, input_path, concurrency, csv_path, **options)
    record: dict[str, Any] = {"protocol": protocol, "concurrency": concurrency, "command": command}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        record["error"] = f"perf_analyzer ran past {timeout_s:.0f} s"
        record["output"] = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (
            error.stdout or "")
        return record
    output = result.stdout + result.stderr
    record["returncode"] = result.returncode
    record["output"] = output
    (work_dir / f"{protocol}-c{concurrency}.txt").write_text(output)
    error_lines = [line.strip() for line in output.splitlines()
                   if re.search(r"\berror\b|Failed", line, re.IGNORECASE)]
    if result.returncode != 0 or not csv_path.exists():
        record["error"] = "; ".join(error_lines) or f"perf_analyzer exited with code {result.returncode}"
        return record
    if error_lines:
        record["error"] = "; ".join(error_lines)
    rows = [row for row in parse_csv(csv_path) if row.get("Concurrency") == concurrency]
    record["csv"] = rows[0] if rows else {}
    record.update(parse_console(output).get(concurrency, {}))
    return record


# ----------------------------------------------------------------------------------------------- reporting


def device_description() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    description: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "kernel": platform.release()}
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            if gpus:
                description["gpus"] = gpus
        except (OSError, subprocess.TimeoutExpired):
            pass
    return description


def device_name(device: dict[str, Any]) -> str:
    if device.get("gpus"):
        return f"{len(device['gpus'])}x {device['gpus'][0]} (CPU {device['cpu']})"
    return f"{device['cpu']}, {device['cpu_count']} cores, no GPU"


def _ms(value: Any) -> str:
    return f"{value / 1000:.0f}" if isinstance(value, (int, float)) else "-"


def markdown_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    composing = report.get("composing_models", COMPOSING_MODELS)
    lines = [
        f"# perf_analyzer: {report['name']}",
        "",
        f"- date: {report['date']}",
        f"- device: {device_name(report['device'])}",
        f"- perf_analyzer: {report['perf_analyzer']}",
        f"- request: {settings['num_frames']} frames, {settings['height']}x{settings['width']}, "
        f"{settings['num_inference_steps']} steps, guidance {settings['guidance_scale']}, "
        f"seed {settings['seed']} (repository: {report['repository']})",
        f"- client: {settings.get('client', 'synchronous')}\n"
        f"- windows: count_windows of {settings['measurement_request_count']} requests, "
        f"stability {settings['stability_percentage']}%, at most {settings.get('max_trials')} windows; "
        f"{'one unrecorded warm-up run per protocol; ' if settings.get('warmup') else ''}"
        f"{settings.get('path', '')}",
        "",
        "| protocol | concurrency | infer/s | avg ms | p50 ms | p90 ms | p99 ms | entry server ms | "
        "entry queue ms | "
        + " | ".join(f"{m} ms" for m in composing) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(composing),
    ]
    for run in report["runs"]:
        if "error" in run and not run.get("csv"):
            lines.append(f"| {run['protocol']} | {run['concurrency']} | error: {run['error'][:120]} |")
            continue
        row = run.get("csv", {})
        per_call = run.get("composing", {})
        per_model = " | ".join(_ms(per_call.get(m, {}).get("avg_request_latency_us")) for m in composing)
        lines.append(
            f"| {run['protocol']} | {run['concurrency']} | {row.get('Inferences/Second', 0):.3f} | "
            f"{_ms(row.get('Avg latency'))} | {_ms(row.get('p50 latency'))} | {_ms(row.get('p90 latency'))} | "
            f"{_ms(row.get('p99 latency'))} | {_ms(run.get('server', {}).get('avg_request_latency_us'))} | "
            f"{_ms(run.get('server', {}).get('queue_us'))} | {per_model} |"
        )
    for skipped in report.get("skipped", []):
        lines.append(f"\nSkipped {skipped['protocol']}: {skipped['reason']}")
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += [
        "",
        "Latencies are client-side; entry server ms is i2vgen_xl's (or i2vgen_xl_stream's) server-side request "
        "latency, which includes its sub-requests; per-model columns are the average server-side latency of one "
        "call of each composing model (queue + compute): a video calls text_encoder twice with CFG (prompt and "
        "negative prompt) and unet once per step. For `stream` (gRPC streaming, decoupled model), "
        "perf_analyzer measures latency to the first response (the first PROGRESS, or a QUEUE response for a "
        "request that waits behind others), and infer/s counts whole requests; its entry server ms is only "
        "the model's execute, which returns once the request is in the model's own line.",
        "",
    ]
    return "\n".join(lines)


def perf_analyzer_version(binary: Path, env: dict[str, str]) -> str:
    try:
        result = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=30)
        return (result.stdout + result.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def run_sweep(
    urls: dict[str, str],
    protocols: Iterable[str],
    concurrencies: Iterable[int],
    work_dir: Path,
    settings: dict[str, Any],
    measurement_request_count: int = 3,
    stability_percentage: float = 100.0,
    max_trials: int = 10,
    cache_hits: bool = False,
    warmup: bool = True,
    asynchronous: bool = False,
    timeout_s: float = 600.0,
    log=print,
) -> dict[str, Any]:
    """Every protocol x concurrency; ``urls`` has "grpc" and "http". Returns the report (not yet written).

    By default every request of every run is new to the server (its own image and prompt), so the
    encoders run each time: the cache-miss path. ``cache_hits``: one request repeated, the path of one
    image tried again and again; the per-model report is then limited to the models that always run.
    ``warmup``: one short, unrecorded perf_analyzer run per protocol first.
    """
    binary, env = perf_analyzer_environment()
    work_dir.mkdir(parents=True, exist_ok=True)
    composing = ("unet", "vae_decoder") if cache_hits else COMPOSING_MODELS
    salt = secrets.randbelow(2**30)  # requests new to this server even after earlier runs on it
    report: dict[str, Any] = {
        "perf_analyzer": perf_analyzer_version(binary, env),
        "settings": dict(settings, measurement_request_count=measurement_request_count,
                         stability_percentage=stability_percentage, max_trials=max_trials, warmup=warmup,
                         client="asynchronous" if asynchronous else "synchronous (streaming: asynchronous)",
                         path="cache hits (one request repeated)" if cache_hits else
                         "cache misses (every request has a new image and prompt)"),
        "composing_models": list(composing),
        "runs": [],
        "skipped": [],
    }
    for protocol in protocols:
        url = urls["http" if protocol == "http" else "grpc"]
        model = STREAM_MODEL if protocol == "stream" else ENTRY_MODEL
        if not server_has_model("http" if protocol == "http" else "grpc", url, model):
            reason = f"the server at {url} has no ready model {model!r}"
            log(f"skipping {protocol}: {reason}")
            report["skipped"].append({"protocol": protocol, "reason": reason})
            continue
        if warmup:  # the first requests of a model are slow (allocations, first calls): not measured
            log(f"warming up {protocol} ...")
            input_path = write_input_data(work_dir / f"{protocol}-warmup-input.json", 12, salt, **settings)
            salt += 12
            run_one(binary, env, protocol, url, input_path, 1, work_dir, timeout_s=timeout_s,
                    measurement_request_count=2, stability_percentage=10000.0, max_trials=3,
                    composing_models=composing, asynchronous=asynchronous)
        for concurrency in concurrencies:
            log(f"perf_analyzer {protocol} concurrency {concurrency} ...")
            entries = 1 if cache_hits else entries_needed(concurrency, measurement_request_count, max_trials)
            input_path = write_input_data(work_dir / f"{protocol}-c{concurrency}-input.json", entries, salt,
                                          **settings)
            salt += entries
            record = run_one(binary, env, protocol, url, input_path, concurrency, work_dir, timeout_s=timeout_s,
                             measurement_request_count=measurement_request_count,
                             stability_percentage=stability_percentage, max_trials=max_trials,
                             composing_models=composing, asynchronous=asynchronous)
            record["distinct_requests"] = entries
            if "error" in record:
                log(f"  error: {record['error']}")
            else:
                log(f"  {record['csv'].get('Inferences/Second')} infer/s, "
                    f"avg {record['csv'].get('Avg latency', 0) / 1000:.0f} ms")
            record.pop("output", None)  # the console text stays in work_dir
            report["runs"].append(record)
    return report


def write_report(report: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    for run in report["runs"]:  # paths of this machine's temporary files are noise in a committed result
        run["command"] = [re.sub(r"/(?:[^/\s=,]+/)+", "", part) for part in run["command"]]
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown_report(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true", help="build the tiny repository in a temporary folder")
    source.add_argument("--repository", type=Path, help="model repository to serve for the run")
    source.add_argument("--grpc-url", help="a running server's gRPC address host:port (give --http-url too)")
    parser.add_argument("--http-url", help="a running server's HTTP address host:port")
    parser.add_argument("--protocols", default="grpc,http",
                        help="comma-separated from grpc, http, stream (stream: gRPC --streaming against "
                             f"{STREAM_MODEL}, skipped if the server lacks it)")
    parser.add_argument("--streaming", action="store_true", help="add the stream protocol to --protocols")
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated concurrency sweep")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=9.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measurement-request-count", type=int, default=3)
    parser.add_argument("--stability-percentage", type=float, default=100.0,
                        help="perf_analyzer -s; shared CPU machines need a loose one")
    parser.add_argument("--max-trials", type=int, default=10, help="perf_analyzer -r")
    parser.add_argument("--cache-hits", action="store_true",
                        help="repeat one request (the latent/prompt cache path) instead of new ones each time")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up run per protocol")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="perf_analyzer --async for grpc/http "
                             "(default: synchronous calls, like openspeedy's client)")
    parser.add_argument("--note", action="append", default=[], help="a line for the markdown report (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per perf_analyzer run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu",
                        help="the card's results folder (bench/results/<card>/)")
    parser.add_argument("--name", default="perf_analyzer", help="result file stem")
    parser.add_argument("--work-dir", type=Path, help="keep perf_analyzer's raw CSV/console output here")
    args = parser.parse_args(argv)

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if args.streaming and "stream" not in protocols:
        protocols.append("stream")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            parser.error(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    settings = dict(num_frames=args.frames, height=args.height, width=args.width,
                    num_inference_steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed)
    try:
        perf_analyzer_environment()
    except PerfAnalyzerUnavailable as error:
        print(f"perf_analyzer unavailable: {error}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="openspeedy-perf-") as temporary:
        work_dir = args.work_dir or Path(temporary) / "work"
        server = None
        repository_label = "running server"
        try:
            if args.grpc_url:
                if not args.http_url:
                    parser.error("--grpc-url needs --http-url")
                urls = {"grpc": args.grpc_url, "http": args.http_url}
            else:
                from openspeedy.server import ServerOptions, TritonServer, free_loopback_port

                repository = args.repository
                repository_label = str(repository)
                if args.tiny:
                    from openspeedy.export.__main__ import main as export_main

                    repository = Path(temporary) / "models"
                    export_main(["--tiny", "--output", str(repository)])
                    repository_label = "tiny (python -m openspeedy.export --tiny)"
                options = ServerOptions(repository, http_port=free_loopback_port(),
                                        grpc_port=free_loopback_port(), metrics_port=free_loopback_port())
                log_path = Path(temporary) / "triton.log"
                print(f"starting tritonserver on {repository} (log {log_path}) ...")
                server = TritonServer(options, log_path=log_path).start()
                urls = {"grpc": server.grpc_url, "http": server.http_url}
            report = run_sweep(urls, protocols, concurrencies, work_dir, settings,
                               measurement_request_count=args.measurement_request_count,
                               stability_percentage=args.stability_percentage, max_trials=args.max_trials,
                               cache_hits=args.cache_hits, warmup=not args.no_warmup,
                               asynchronous=args.asynchronous, timeout_s=args.timeout)
        finally:
            if server is not None:
                server.stop()
    report = {"name": args.name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device_description(), "repository": repository_label, "notes": args.note, **report}
    json_path, md_path = write_report(report, args.out, args.name)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in run for run in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
