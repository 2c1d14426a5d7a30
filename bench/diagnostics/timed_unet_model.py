"""Benchmark-only Triton adapter for `unet` (python -m bench.gpu_serving --unet-timings copies it over the
repository's unet/1/model.py): the production adapter, plus where each request's time goes inside the stub.

Nsight Systems cannot write a report on the GPU machine, so the stub times itself. Per request, one JSON
line in $OPENSPEEDY_UNET_TIMINGS:
- cpu_read_inputs_ms: DLPack views of the inputs (what Triton handed over);
- cpu_forward_ms: the forward's CPU side (kernel launches or a CUDA graph replay);
- cpu_execute_ms: the whole execute, responses included (Triton's compute_infer, seen from inside);
- gpu_execute_ms: on the GPU, from execute's entry to the forward's last kernel. Against cpu_forward_ms
  and Triton's compute_output it tells the GPU's own time from waiting on the CPU and from handing the
  output back.
Requests PROFILED_CALLS are profiled (bench/diagnostics/call_profiler.py, copied beside this file); the report goes to
$OPENSPEEDY_UNET_TIMINGS.prof.txt.
"""

import json
import os
import time

import torch

# Beside this file in the model's version folder, which Triton's python backend puts on sys.path.
from call_profiler import PROFILED_CALLS, CallProfiler

from openspeedy.serving import component_model as adapter
from openspeedy.serving.component_model import component_model

PRODUCTION = component_model("unet")


def gpu_event() -> "torch.cuda.Event | None":
    """An event recorded now on the current stream (None without a GPU: the CPU timings still hold)."""
    if not torch.cuda.is_available():
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class TritonPythonModel(PRODUCTION):
    def initialize(self, args):
        super().initialize(args)
        self.timings = open(os.environ["OPENSPEEDY_UNET_TIMINGS"], "a")  # noqa: SIM115 - open for the model's life
        self.pending = None  # the last request's events, read once the GPU is surely past them
        infer, read_inputs = self.component.infer, adapter.read_inputs
        marks = {}
        self.profiler = CallProfiler(PROFILED_CALLS)

        def timed_read_inputs(request, contract):
            marks["entry"] = time.perf_counter()
            marks["gpu_entry"] = gpu_event()
            inputs = read_inputs(request, contract)
            marks["inputs"] = time.perf_counter()
            return inputs

        def timed_infer(inputs):
            outputs = self.profiler(infer, inputs)
            marks["forward"] = time.perf_counter()
            marks["gpu_forward"] = gpu_event()
            return outputs

        adapter.read_inputs, self.component.infer, self.marks = timed_read_inputs, timed_infer, marks

    def execute(self, requests):
        self._write_pending()
        responses = super().execute(requests)
        marks = self.marks
        self.pending = dict(
            cpu_read_inputs_ms=(marks["inputs"] - marks["entry"]) * 1e3,
            cpu_forward_ms=(marks["forward"] - marks["inputs"]) * 1e3,
            cpu_execute_ms=(time.perf_counter() - marks["entry"]) * 1e3,
            events=(marks["gpu_entry"], marks["gpu_forward"]),
        )
        return responses

    def _write_pending(self):
        if self.pending is None:
            return
        start, end = self.pending.pop("events")
        if end is not None:
            end.synchronize()
            self.pending["gpu_execute_ms"] = start.elapsed_time(end)
        self.timings.write(json.dumps(self.pending) + "\n")
        self.timings.flush()
        self.pending = None

    def finalize(self):
        self._write_pending()
        self.timings.close()
        with open(os.environ["OPENSPEEDY_UNET_TIMINGS"] + ".prof.txt", "w") as report:
            report.write(self.profiler.report())
