"""Profiles chosen calls of a function with cProfile (the CPU side, in Python) and torch.profiler (each
CUDA kernel's time), for the served UNet (bench/diagnostics/timed_unet_model.py) and the same UNet in
process (bench/gpu_serving.py), so the two reports can be set side by side."""

from __future__ import annotations

import cProfile
import io
import pstats

import torch
from torch.profiler import ProfilerActivity, profile

# The calls both sides profile: three steps into the second 50-step video, past any warm-up.
PROFILED_CALLS = range(60, 63)


class CallProfiler:
    def __init__(self, calls: range):
        self.calls, self.count = calls, 0
        self.python = cProfile.Profile()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.kernels = profile(activities=activities)
        self.kernels_started = False

    def __call__(self, function, *args):
        """``function(*args)``, profiled when this is one of the chosen calls (counted from 0)."""
        profiled = self.count in self.calls
        self.count += 1
        if not profiled:
            return function(*args)
        if not self.kernels_started:
            self.kernels.start()
            self.kernels_started = True
        self.python.enable()
        try:
            return function(*args)
        finally:
            self.python.disable()
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the kernels are in this call's report, not the next one's
            if self.count == self.calls.stop:
                self.kernels.stop()

    def report(self) -> str:
        if self.count <= self.calls.start:
            return "no profiled call was made\n"
        text = io.StringIO()
        text.write(f"calls {self.calls.start}..{self.calls.stop - 1}; cuDNN {torch.backends.cudnn.version()}\n")
        text.write("\n== torch.profiler (operators and CUDA kernels) ==\n")
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        text.write(self.kernels.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=90))
        text.write("\n== Python (cProfile) ==\n")
        pstats.Stats(self.python, stream=text).sort_stats("cumulative").print_stats(40)
        return text.getvalue()
