"""Triton model ``i2vgen_xl``: validates the public request, runs the pipeline over BLS, answers the video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from openspeedy.cache import CacheSettings, EncodingCaches
from openspeedy.contracts import I2VGEN_XL
from openspeedy.pipeline import I2VGenXL
from openspeedy.request import RequestSettings, parse_request
from openspeedy.serving.triton_io import (
    bls_call,
    error_response,
    instance_device,
    model_parameters,
    pb_utils,
    read_inputs,
    to_triton,
)
from openspeedy.serving.metrics import TritonCacheMetrics
from openspeedy.video import encode_mp4


class EntryModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.settings = RequestSettings.from_parameters(parameters)
        scheduler_config = json.loads((version_dir / "scheduler" / "scheduler_config.json").read_text())
        self.cache_metrics = TritonCacheMetrics()
        caches = EncodingCaches(CacheSettings.from_parameters(parameters), self.cache_metrics)
        self.pipeline = I2VGenXL(
            bls_call, scheduler_config, float(parameters["vae_scaling_factor"]), instance_device(args), caches
        )

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        try:
            generation = parse_request(read_inputs(request, I2VGEN_XL, as_numpy=True), self.settings)
            video = self.pipeline.generate(generation)
            wanted = set(request.requested_output_names()) or {"VIDEO", "VIDEO_MP4"}
            outputs = []
            if "VIDEO" in wanted:
                outputs.append(to_triton("VIDEO", video))
            if "VIDEO_MP4" in wanted:
                mp4 = encode_mp4(video.cpu().numpy(), fps=generation.target_fps)
                outputs.append(to_triton("VIDEO_MP4", np.array([mp4], dtype=np.object_)))
            return pb_utils.InferenceResponse(output_tensors=outputs)
        except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
            return error_response(error)
