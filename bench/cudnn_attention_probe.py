"""Which cuDNN attention kernel does a process get, and how fast is it? In process and inside a Triton
python backend stub (a probe model that runs this in its initialize).

Why: profiling the served UNet (bench/gpu_serving.py --unet-timings) showed the same compiled graph
running cuDNN's SDPA with a different engine configuration in the stub than in process, 40% slower,
which was the whole GPU-side serving overhead. This found the cause: the server's library path put the
system's cuDNN 9.14 before torch's 9.19 (bench/results/cudnn_attention_probe_h200.json, where torch
refuses it; the UNet in the stub never asked). After the fix (server._libpython_folder) every variant
here should load torch's own cuDNN and get the same kernels.

Usage (on the GPU machine, in gpu_serving.sh's environment): SCRIPT=bench/cudnn_attention_probe.py bash
bench/gpu_serving.sh OUT. Writes OUT/cudnn_attention_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The UNet's attention shapes at 16x512x512 with CFG: spatial self-attention at the top level
# (32 frames x 5 heads, 4096 tokens), cross-attention (77 tokens), temporal attention (16 tokens).
SHAPES = {"spatial_64x64": (32, 5, 4096, 4096, 64), "cross_64x64": (32, 5, 4096, 77, 64),
          "temporal_64x64": (8192, 5, 16, 16, 64)}


def probe() -> dict:
    """Kernel names and mean µs of torch's SDPA on each shape, per backend, in this process."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    results = {"cudnn_version": torch.backends.cudnn.version(),
               "libraries": sorted({line.split()[-1] for line in open("/proc/self/maps")
                                   if any(name in line for name in ("cudnn", "nvrtc", "cudart", "cublas"))})}
    for shape_name, (batch, heads, queries, keys, dim) in SHAPES.items():
        q = torch.randn(batch, heads, queries, dim, device="cuda", dtype=torch.float16)
        k = torch.randn(batch, heads, keys, dim, device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    for _ in range(3):
                        F.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as trace:
                        for _ in range(10):
                            F.scaled_dot_product_attention(q, k, v)
                        torch.cuda.synchronize()
            except RuntimeError as error:
                results[f"{shape_name}/{backend.name}"] = f"unavailable: {str(error)[:200]}"
                continue
            kernels = [event for event in trace.key_averages() if event.device_time_total > 0
                       and not event.key.startswith(("Memcpy", "Memset"))]
            results[f"{shape_name}/{backend.name}"] = {
                event.key[:120]: round(event.device_time_total / event.count, 1) for event in kernels}
    return results


def run_in_subprocess(environment: dict[str, str], preload_cudart: str | None = None) -> dict:
    code = "import json, sys; sys.path.insert(0, %r)\n" % str(Path(__file__).parent)
    if preload_cudart:
        # As in the stub: a CUDA 12 runtime creates the device's context before torch is imported.
        code += "import ctypes; ctypes.CDLL(%r).cudaFree(None)\n" % preload_cudart
    code += "from cudnn_attention_probe import probe; print('PROBE' + json.dumps(probe()))"
    output = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    for line in output.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    return {"error": output.stderr[-2000:]}


def run_in_stub(out: Path, environment_extra: dict[str, str]) -> dict:
    from openspeedy.server import ServerOptions, TritonServer

    repository = Path("/tmp/probe_repository")
    model = repository / "attention_probe"
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(textwrap.dedent("""\
        backend: "python"
        max_batch_size: 0
        input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]
        output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]
        instance_group [{ kind: KIND_GPU, count: 1 }]
        """))
    (model / "1" / "model.py").write_text(textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from cudnn_attention_probe import probe

        class TritonPythonModel:
            def initialize(self, args):
                with open("/tmp/probe_stub.json", "w") as f:
                    json.dump(probe(), f)

            def execute(self, requests):
                return []
        """))
    previous = {key: os.environ.get(key) for key in environment_extra}
    os.environ.update(environment_extra)  # the server's environment, which its stubs inherit, copies ours
    try:
        server = TritonServer(ServerOptions(repository, restart_dead_stubs=False), log_path=out / "probe_triton.log")
        server.start(timeout=300)
        server.stop()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return json.loads(Path("/tmp/probe_stub.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from openspeedy.server import ServerOptions, TritonServer, find_triton

    install = find_triton()
    server_environment = TritonServer(ServerOptions(Path("/tmp"))).environment(install)
    cudart = next(Path(p) for path in install.library_paths for p in Path(path).glob("libcudart*.so*"))
    # cuDNN's own log (API calls, heuristics, plan builds) in process and in the stub, to compare.
    log = {"CUDNN_LOGLEVEL_DBG": "3"}
    variants = {
        "in_process": lambda: run_in_subprocess(os.environ | log | {"CUDNN_LOGDEST_DBG": "/tmp/cudnn_in_process.log"}),
        "server_environment": lambda: run_in_subprocess(server_environment),
        "cuda12_runtime_first": lambda: run_in_subprocess(server_environment, preload_cudart=str(cudart)),
        "stub": lambda: run_in_stub(args.out, log | {"CUDNN_LOGDEST_DBG": "/tmp/cudnn_stub.log"}),
    }
    results = {}
    for name, variant in variants.items():
        try:
            results[name] = variant()
        except Exception as error:  # noqa: BLE001 - a failed variant is a result too
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    for name in ("in_process", "stub"):
        log_file = Path(f"/tmp/cudnn_{name}.log")
        if log_file.exists():  # the first 8 MiB: what comes back from the GPU machine is limited
            (args.out / log_file.name).write_bytes(log_file.read_bytes()[: 8 * 2**20])
    (args.out / "cudnn_attention_probe.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
