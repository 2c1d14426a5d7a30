"""Triton models ``i2vgen_xl`` and ``i2vgen_xl_stream``: validate the public request, run the pipeline
over BLS, answer the video. The stream model (decoupled, gRPC) also sends one PROGRESS response per step.
A cancelled request, a disconnected client or the per-request time limit stops the denoising within one
step; the server keeps serving whatever a request does. The stream model's requests wait in its own
line, which tells each its place (openspeedy.serving.line)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from openspeedy.cache import CacheSettings, EncodingCaches
from openspeedy.contracts import I2VGEN_XL, I2VGEN_XL_STREAM
from openspeedy.model_parameters import cfg_parallel_gpus, flag
from openspeedy.pipeline import I2VGenXL
from openspeedy.preview import Previews
from openspeedy.request import RequestSettings, parse_request
from openspeedy.serving.line import Line
from openspeedy.serving.metrics import LoadMetric, ServingMetrics, TritonCacheMetrics
from openspeedy.serving.triton_io import (
    BlsCaller,
    error_response,
    forward_logs_to_triton,
    instance_device,
    model_parameters,
    pb_utils,
    read_inputs,
    to_triton,
)
from openspeedy.video import encode_mp4


class GenerationStopped(RuntimeError):
    """The request was cancelled or ran past its time limit; ``triton_code`` is the Triton error code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.triton_code = code


class EntryModel:
    contract = I2VGEN_XL

    def initialize(self, args):
        parameters = model_parameters(args)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.model_name = args["model_name"]
        self.device = instance_device(args)
        self.settings = RequestSettings.from_parameters(parameters)
        scheduler_config = json.loads((version_dir / "scheduler" / "scheduler_config.json").read_text())
        # Metric families are attributes: a family that goes out of scope is deleted with its metrics.
        self.cache_metrics = TritonCacheMetrics()
        self.metrics = ServingMetrics(self.model_name)
        self.load_metric = LoadMetric(self.model_name, args["model_instance_name"])
        caches = EncodingCaches(CacheSettings.from_parameters(parameters), self.cache_metrics)
        per_gpu = flag(parameters, "components_per_gpu")
        if per_gpu and self.device.type != "cuda":
            raise ValueError("components_per_gpu needs the orchestrator on a GPU (instance kind KIND_GPU)")
        cfg_parallel, half_gpus = self.cfg_parallel(parameters)
        call = BlsCaller(self.device, per_gpu, half_gpus)
        self.pipeline = I2VGenXL(call, scheduler_config, float(parameters["vae_scaling_factor"]), self.device, caches,
                                 cfg_parallel=cfg_parallel)

    def cfg_parallel(self, parameters) -> tuple[bool, tuple[int, ...]]:
        """Whether the guidance halves go out as two concurrent UNet calls, and the GPUs they go to."""
        if not flag(parameters, "cfg_parallel"):
            return False, ()
        if self.device.type != "cuda":
            return True, ()  # CPU: two unet instances, Triton gives each half to one
        own = self.device.index or 0
        halves = cfg_parallel_gpus(parameters, own)
        if halves is None:
            pb_utils.Logger.log_warn(f"{self.model_name}: cfg_parallel needs two GPUs listed in cfg_parallel_gpus, "
                                     f"this instance's GPU {own} among them; the batched UNet call is used")
            return False, ()
        return True, halves

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self.generate(request)))
            except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
                responses.append(self.failure(error))
        return responses

    def log_not_started(self) -> None:
        pb_utils.Logger.log_info(f"{self.model_name}: request cancelled before it started; not run")

    def parse(self, request):
        return parse_request(read_inputs(request, self.contract, as_numpy=True), self.settings, self.contract)

    def generate(self, request, on_progress=None, generation=None) -> list:
        """Runs one request (its ``generation`` when already parsed) to its output tensors; ``on_progress(done,
        total, preview)`` after each step, ``preview`` the PNG of a live preview at the request's
        PREVIEW_INTERVAL, else None."""
        if request.is_cancelled():
            # Cancelled while it waited in the queue: answered now, not after its encoders and first step (a
            # storm of cancelled streams otherwise keeps a stop waiting for each queued one to get that far).
            self.log_not_started()
            raise GenerationStopped("request cancelled before it started", _code("CANCELLED"))
        generation = generation.with_pixels(self.settings) if generation else self.parse(request)
        wanted = _wanted(request, self.contract)
        previews = Previews(generation)

        limit = self.settings.max_request_seconds
        started = last_step = time.monotonic()

        def on_step(done: int, total: int) -> None:
            nonlocal last_step
            now = time.monotonic()
            self.metrics.step_seconds.observe(now - last_step)
            last_step = now
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"{self.model_name}: request cancelled after step {done}/{total}; stopped")
                raise GenerationStopped(f"request cancelled after step {done}/{total}", _code("CANCELLED"))
            if limit and now - started > limit:
                raise GenerationStopped(
                    f"request ran past its limit of {limit:g} s after step {done}/{total}", _code("UNAVAILABLE")
                )
            if on_progress is not None:
                on_progress(done, total, previews.take(done))

        from_cache = []
        with self.metrics.in_flight():
            video = self.pipeline.generate(generation, on_step, from_cache.append,
                                           previews if "PREVIEW" in wanted else None)
        self.metrics.frames.increment(int(video.shape[0]))
        outputs = []
        if "CACHE_HIT" in wanted:
            outputs.append(to_triton("CACHE_HIT", np.array(from_cache[:1] or [False], dtype=np.bool_)))
        if "VIDEO" in wanted:
            outputs.append(to_triton("VIDEO", video))
        if "VIDEO_MP4" in wanted:
            mp4 = encode_mp4(video.cpu().numpy(), fps=generation.target_fps)
            outputs.append(to_triton("VIDEO_MP4", np.array([mp4], dtype=np.object_)))
        return outputs

    def failure(self, error: Exception):
        """The error response for ``error``, after giving back the device memory the request held."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return error_response(error)


class StreamEntryModel(EntryModel):
    """Decoupled: QUEUE (requests ahead, expected milliseconds to the start) while it waits, PROGRESS
    (steps done, total) after every step, with a PREVIEW every PREVIEW_INTERVAL steps, then the video in
    the final response.

    Its requests wait in its own line (openspeedy.serving.line), which can tell each its place, unless the
    operator turned priority on (Triton's scheduler orders them by a priority a model cannot read) or the
    model has several instances (several GPUs: Triton gives each request to the first instance that is
    free, which no one instance's line could): then they wait in Triton's queue, without QUEUE responses."""

    contract = I2VGEN_XL_STREAM

    def initialize(self, args):
        super().initialize(args)
        config = json.loads(args["model_config"])
        batching = config.get("dynamic_batching", {})
        self.line = None
        if not int(batching.get("priority_levels", 0) or 0) and _instances(config) == 1:
            capacity = int(batching.get("default_queue_policy", {}).get("max_queue_size", 0) or 0)
            # 0: unbounded, as in Triton
            self.line = Line(self.model_name, capacity or sys.maxsize, self.metrics.waiting.set,
                             self.metrics.wait_seconds.observe)
            forward_logs_to_triton()  # the line's stop lines, which the launcher watches for

    def execute(self, requests):
        for request in requests:
            waiter = _Waiting(self, request)
            if self.line is None:
                waiter.run()
                continue
            try:
                waiter.generation = self.parse(request).without_pixels()
            except Exception as error:  # noqa: BLE001 - bad input is answered at once, without waiting
                waiter.answer(self.failure(error))
                continue
            self.line.add(waiter, request.timeout() / 1e6)
        return None

    def finalize(self):
        if self.line is not None:
            self.line.close()


class _Waiting:
    """One stream request, as the line sees it (openspeedy.serving.line.Waiter)."""

    def __init__(self, model: StreamEntryModel, request):
        self.model, self.request = model, request
        self.sender = request.get_response_sender()
        self.wanted = _wanted(request, model.contract)
        self.generation = None

    @property
    def steps(self) -> int:
        return self.generation.num_inference_steps

    @property
    def volume(self) -> int:
        return self.generation.num_frames * self.generation.height * self.generation.width

    def cancelled(self) -> bool:
        return self.request.is_cancelled()

    def tell(self, ahead: int, starts_in_ms: int) -> None:
        if "QUEUE" in self.wanted:
            queue = pb_utils.Tensor("QUEUE", np.array([ahead, starts_in_ms], dtype=np.int32))
            self.sender.send(pb_utils.InferenceResponse(output_tensors=[queue]))

    def refuse(self, message: str, code: str) -> None:
        if code == "CANCELLED":
            self.model.log_not_started()
        self.answer(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, _code(code))))

    def run(self, on_step=None) -> None:
        def progress(done: int, total: int, preview: bytes | None) -> None:
            if on_step is not None:
                on_step(done, total)
            tensors = [pb_utils.Tensor("PROGRESS", np.array([done, total], dtype=np.int32))]
            if preview is not None:
                tensors.append(pb_utils.Tensor("PREVIEW", np.array([preview], dtype=np.object_)))
            self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

        try:
            response = pb_utils.InferenceResponse(output_tensors=self.model.generate(self.request, progress,
                                                                                     self.generation))
        except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
            response = self.model.failure(error)
        self.answer(response)

    def answer(self, response) -> None:
        self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _instances(config: dict) -> int:
    """The model's instances over every instance group: each group's count on each of its GPUs."""
    return sum(int(group.get("count", 1)) * max(1, len(group.get("gpus", []))) for group in
               config.get("instance_group", [{}]))


def _wanted(request, contract) -> set[str]:
    """The outputs a request asked for; all of them when it named none."""
    return set(request.requested_output_names()) or set(contract.output_names)


def _code(name: str) -> int:
    return getattr(pb_utils.TritonError, name, pb_utils.TritonError.UNKNOWN)
