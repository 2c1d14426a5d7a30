"""Triton models ``i2vgen_xl`` and ``i2vgen_xl_stream``: validate the public request, run the pipeline
over BLS, answer the video. The stream model (decoupled, gRPC) also sends one PROGRESS response per step.
A cancelled request, a disconnected client or the per-request time limit stops the denoising within one
step; the server keeps serving whatever a request does."""

from __future__ import annotations

import json
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
from openspeedy.serving.metrics import LoadMetric, ServingMetrics, TritonCacheMetrics
from openspeedy.serving.triton_io import (
    BlsCaller,
    error_response,
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

    def generate(self, request, on_progress=None) -> list:
        """Runs one request to its output tensors; ``on_progress(done, total, preview)`` after each step,
        ``preview`` the PNG of a live preview at the request's PREVIEW_INTERVAL, else None."""
        if request.is_cancelled():
            # Cancelled while it waited in the queue: answered now, not after its encoders and first step (a
            # storm of cancelled streams otherwise keeps a stop waiting for each queued one to get that far).
            pb_utils.Logger.log_info(f"{self.model_name}: request cancelled before it started; not run")
            raise GenerationStopped("request cancelled before it started", _code("CANCELLED"))
        generation = parse_request(read_inputs(request, self.contract, as_numpy=True), self.settings, self.contract)
        wanted = set(request.requested_output_names()) or set(self.contract.output_names)
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
    """Decoupled: PROGRESS (steps done, total) after every step, with a PREVIEW every PREVIEW_INTERVAL
    steps, then the video in the final response."""

    contract = I2VGEN_XL_STREAM

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()

            def progress(done: int, total: int, preview: bytes | None) -> None:
                tensors = [pb_utils.Tensor("PROGRESS", np.array([done, total], dtype=np.int32))]
                if preview is not None:
                    tensors.append(pb_utils.Tensor("PREVIEW", np.array([preview], dtype=np.object_)))
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors))  # noqa: B023 - this request's only

            try:
                response = pb_utils.InferenceResponse(output_tensors=self.generate(request, progress))
            except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
                response = self.failure(error)
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None


def _code(name: str) -> int:
    return getattr(pb_utils.TritonError, name, pb_utils.TritonError.UNKNOWN)
