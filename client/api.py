"""A small typed client for the ``i2vgen_xl`` model, over gRPC (default) or HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openspeedy.contracts import I2VGEN_XL

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}

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
    """The server refused or failed the request; the message is the server's."""


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
        return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}

    def infer_arrays(self, arrays: dict[str, np.ndarray], outputs: tuple[str, ...] = ("VIDEO",)):
        """A raw inference: contract-named input arrays in, the requested output arrays out."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, array in arrays.items():
            infer_input = self._triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        if self.protocol == "grpc":
            requested = [self._triton.InferRequestedOutput(name) for name in outputs]
            kwargs = {"client_timeout": self.timeout_s} if self.timeout_s else {}
        else:
            requested = [self._triton.InferRequestedOutput(name, binary_data=True) for name in outputs]
            kwargs = {}
        try:
            result = self._client.infer(self.model, inputs, outputs=requested, **kwargs)
        except InferenceServerException as error:
            raise GenerationError(error.message() or str(error)) from None
        return {name: result.as_numpy(name) for name in outputs}

    def generate(self, image: Any, prompt: str, *, frames: bool = True, mp4: bool = False, **options: Any) -> Video:
        """Generates a video. ``image``: encoded bytes, a path or a PIL image; options: see OPTIONAL_INPUTS."""
        wanted = tuple(name for name, flag in (("VIDEO", frames), ("VIDEO_MP4", mp4)) if flag)
        if not wanted:
            raise ValueError("ask for frames, mp4 or both")
        result = self.infer_arrays(request_arrays(image, prompt, **options), wanted)
        return Video(
            frames=result.get("VIDEO"),
            mp4=bytes(result["VIDEO_MP4"][0]) if "VIDEO_MP4" in result else None,
        )
