"""A small typed client for the ``i2vgen_xl`` model, over gRPC (default) or HTTP."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openspeedy.contracts import I2VGEN_XL

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
STREAM_MODEL = "i2vgen_xl_stream"

# Keyword arguments of Client.generate -> contract input names.
OPTIONAL_INPUTS = {
    "negative_prompt": "NEGATIVE_PROMPT",
    "num_frames": "NUM_FRAMES",
    "height": "HEIGHT",
    "width": "WIDTH",
    "num_inference_steps": "NUM_INFERENCE_STEPS",
    "guidance_scale": "GUIDANCE_SCALE",
    "target_fps": "TARGET_FPS",
    "seed": "SEED",
    "decode_chunk_size": "DECODE_CHUNK_SIZE",
}


class GenerationError(RuntimeError):
    """The server refused or failed the request; the message is the server's. ``retryable`` is true
    when the server was only too busy (its queue was full, or it is not ready): send it again later."""

    def __init__(self, message: str, status: str | None = None):
        self.status = status
        self.retryable = bool(status) and any(s in status for s in ("UNAVAILABLE", "503")) or (
            "Exceeds maximum queue size" in message
        )
        if self.retryable and "retry" not in message:
            message = f"server unavailable (busy or restarting), retry later: {message}"
        super().__init__(message)


def _error(error: Exception) -> GenerationError:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return GenerationError(error.message() or str(error), str(error.status() or ""))
    return GenerationError(str(error))


@dataclass
class Video:
    frames: np.ndarray | None  # uint8 [F, H, W, 3], when requested
    mp4: bytes | None  # H.264 MP4, when requested


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    import io

    buffer = io.BytesIO()  # a PIL image
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request_arrays(image: Any, prompt: str, **options: Any) -> dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays keyed by contract name (None options are left out)."""
    arrays = {
        "IMAGE": np.array([_image_bytes(image)], dtype=np.object_),
        "PROMPT": np.array([prompt.encode("utf-8")], dtype=np.object_),
    }
    for keyword, value in options.items():
        if keyword not in OPTIONAL_INPUTS:
            raise TypeError(f"unknown option {keyword!r}; options are {sorted(OPTIONAL_INPUTS)}")
        if value is None:
            continue
        spec = I2VGEN_XL.input(OPTIONAL_INPUTS[keyword])
        if spec.datatype == "BYTES":
            arrays[spec.name] = np.array([str(value).encode("utf-8")], dtype=np.object_)
        else:
            arrays[spec.name] = np.array([value], dtype=spec.numpy_dtype)
    return arrays


class Client:
    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = I2VGEN_XL.name,
                 timeout_s: float | None = None):
        if protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        self.url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton
        self._triton = triton
        kwargs = {} if protocol == "grpc" else {"connection_timeout": timeout_s or 60.0,
                                                "network_timeout": timeout_s or 3600.0}
        self._client = triton.InferenceServerClient(self.url, **kwargs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        return self._client.is_model_ready(self.model)

    def model_parameters(self) -> dict[str, str]:
        """The entry model's config parameters (its defaults and limits)."""
        if self.protocol == "grpc":
            config = self._client.get_model_config(self.model, as_json=True)["config"]
        else:
            config = self._client.get_model_config(self.model)
        # gRPC's JSON leaves out empty strings: a parameter set to "" arrives as {}.
        return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}

    def infer_arrays(self, arrays: dict[str, np.ndarray], outputs: tuple[str, ...] = ("VIDEO",), priority: int = 0):
        """A raw inference: contract-named input arrays in, the requested output arrays out.
        ``priority`` 1 is served before the default 2 when requests queue (0: the model's default)."""
        from tritonclient.utils import InferenceServerException

        inputs = self._inputs(arrays)
        if self.protocol == "grpc":
            requested = [self._triton.InferRequestedOutput(name) for name in outputs]
            kwargs = {"client_timeout": self.timeout_s} if self.timeout_s else {}
        else:
            requested = [self._triton.InferRequestedOutput(name, binary_data=True) for name in outputs]
            kwargs = {}
        try:
            result = self._client.infer(self.model, inputs, outputs=requested, priority=priority, **kwargs)
        except InferenceServerException as error:
            raise _error(error) from None
        return {name: result.as_numpy(name) for name in outputs}

    def _inputs(self, arrays: dict[str, np.ndarray]) -> list:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, array in arrays.items():
            infer_input = self._triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        return inputs

    def generate_stream(
        self,
        image: Any,
        prompt: str,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        frames: bool = True,
        mp4: bool = False,
        cancel_after_step: int | None = None,
        model: str = STREAM_MODEL,
        **options: Any,
    ) -> Video:
        """Like ``generate`` through the streaming model (gRPC only): ``on_progress(done, total)`` after
        each denoising step. ``cancel_after_step`` cancels the request once that step is reported (the
        server stops within a step) and raises GenerationError with ``cancelled`` set."""
        if self.protocol != "grpc":
            raise ValueError("streaming needs gRPC: Triton answers decoupled models over HTTP with 501")
        wanted = ["PROGRESS"] + [name for name, flag in (("VIDEO", frames), ("VIDEO_MP4", mp4)) if flag]
        events: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: events.put((result, error)),
                                  stream_timeout=self.timeout_s)
        try:
            self._client.async_stream_infer(
                model, self._inputs(request_arrays(image, prompt, **options)),
                outputs=[self._triton.InferRequestedOutput(name) for name in wanted],
                enable_empty_final_response=True,
            )
            while True:
                result, error = events.get(timeout=self.timeout_s)
                if error is not None:
                    raise _error(error)
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                progress = result.as_numpy("PROGRESS")
                if progress is not None:
                    done, total = (int(v) for v in progress)
                    if on_progress is not None:
                        on_progress(done, total)
                    if cancel_after_step is not None and done >= cancel_after_step:
                        self._client.stop_stream(cancel_requests=True)
                        error = GenerationError(f"cancelled by the client after step {done}/{total}")
                        error.cancelled = True
                        raise error
                elif result.as_numpy("VIDEO") is not None or result.as_numpy("VIDEO_MP4") is not None:
                    video = result.as_numpy("VIDEO")
                    encoded = result.as_numpy("VIDEO_MP4")
                    return Video(frames=video, mp4=bytes(encoded[0]) if encoded is not None else None)
                elif final is not None and final.bool_param:
                    raise GenerationError("the stream ended without a video")
        finally:
            self._client.stop_stream()

    def generate(self, image: Any, prompt: str, *, frames: bool = True, mp4: bool = False, priority: int = 0,
                 **options: Any) -> Video:
        """Generates a video. ``image``: encoded bytes, a path or a PIL image; options: see OPTIONAL_INPUTS."""
        wanted = tuple(name for name, flag in (("VIDEO", frames), ("VIDEO_MP4", mp4)) if flag)
        if not wanted:
            raise ValueError("ask for frames, mp4 or both")
        result = self.infer_arrays(request_arrays(image, prompt, **options), wanted, priority)
        return Video(
            frames=result.get("VIDEO"),
            mp4=bytes(result["VIDEO_MP4"][0]) if "VIDEO_MP4" in result else None,
        )
