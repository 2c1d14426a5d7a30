"""A small typed client for OpenSpeedy's entry models, over gRPC (default) or HTTP.

Every way of asking for a video honours the model name, the priority, a time limit and cancellation:
a cancelled or timed-out gRPC request is cancelled on the server too, which stops it within one
denoising step. Requests the server refuses as UNAVAILABLE (queue full, not ready, not reachable) are
sent again with exponential backoff, up to a cap (``RetryPolicy``, through tenacity).
"""

from __future__ import annotations

import io
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openspeedy.contracts import I2VGEN_XL, I2VGEN_XL_STREAM
from openspeedy.errors import named_input

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
STREAM_MODEL = I2VGEN_XL_STREAM.name

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
    # Opt-in approximations (docs/speed.md): guidance_interval=(start, end), feature_reuse_interval=N.
    "guidance_interval": "GUIDANCE_INTERVAL",
    "feature_reuse_interval": "FEATURE_REUSE_INTERVAL",
}
# Options only the streaming model has: a live preview every N steps (0: none).
STREAM_OPTIONS = {"preview_interval": "PREVIEW_INTERVAL"}

# How often a waiting client looks at its cancel flag and deadline: well under one denoising step.
_POLL_S = 0.05

# HTTP status -> the gRPC status name that the rest of the client speaks.
_HTTP_STATUS = {"400": "INVALID_ARGUMENT", "404": "NOT_FOUND", "499": "CANCELLED", "500": "INTERNAL",
                "503": "UNAVAILABLE"}

# Triton's streaming protocol (ModelStreamInferResponse) carries an error's message but drops its code;
# the one refusal worth recognising there is Triton's own queue-full message, which has the code
# UNAVAILABLE everywhere else (gRPC status 14, HTTP 503).
_STREAM_REFUSAL = "Exceeds maximum queue size"


class GenerationError(RuntimeError):
    """The server refused or failed the request; the message is the server's.

    ``status``: the gRPC status name ("UNAVAILABLE", "INVALID_ARGUMENT", ...) or None when unknown.
    ``retryable``: the server was only busy or not ready (UNAVAILABLE): send it again later.
    ``input_name``: the request input a bad-input error names ("HEIGHT", ...), else None.
    ``after_step``: the denoising steps the server had reported before the error (streaming)."""

    def __init__(self, message: str, status: str | None = None, after_step: int = 0):
        self.status = status
        self.retryable = status == "UNAVAILABLE"
        self.cancelled = status == "CANCELLED"
        self.input_name = named_input(message)
        self.after_step = after_step
        if self.retryable and "retry" not in message:
            message = f"server unavailable (busy, restarting or not reachable), retry later: {message}"
        super().__init__(message)


class GenerationCancelled(GenerationError):
    """This client cancelled the request (``cancel`` was set); the server stops within one step."""

    def __init__(self, message: str, after_step: int = 0):
        super().__init__(message, "CANCELLED", after_step)


class GenerationTimeout(GenerationError):
    """No video within the client's time limit; the request was cancelled (on the server too, over gRPC)."""

    def __init__(self, message: str, after_step: int = 0):
        super().__init__(message, "DEADLINE_EXCEEDED", after_step)


def _status(error: Any) -> str | None:
    status = str(error.status() or "")
    if status.startswith("StatusCode."):
        return status.removeprefix("StatusCode.")
    if status in _HTTP_STATUS:
        return _HTTP_STATUS[status]
    if not status and _STREAM_REFUSAL in (error.message() or ""):
        return "UNAVAILABLE"
    return status or None


def _error(error: Exception, after_step: int = 0) -> GenerationError:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, GenerationError):
        return error
    if isinstance(error, InferenceServerException):
        return GenerationError(error.message() or str(error), _status(error), after_step)
    return GenerationError(str(error), after_step=after_step)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of requests refused as UNAVAILABLE before any work was done on them: ``attempts`` in all,
    waiting ``initial_s`` after the first refusal, twice as long after each next one (with jitter, so
    refused clients do not come back together), at most ``max_s``."""

    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 8.0

    def call(self, attempt: Callable[[], Any], on_retry: Callable[[int, float, GenerationError], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Any:
        import tenacity

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is not None:
                on_retry(state.attempt_number, state.next_action.sleep, state.outcome.exception())

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, GenerationError) and e.retryable and not e.after_step
            ),
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=tenacity.wait_exponential_jitter(initial=self.initial_s, max=self.max_s, exp_base=2,
                                                  jitter=self.initial_s),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(attempt)


NO_RETRY = RetryPolicy(attempts=1)


def _keepalive():
    """Pings on an idle connection, so a server or network path that died is noticed during a long
    generation instead of waiting for ever. Kept within Triton's (gRPC's) default server limits: at most
    two pings without data, a minute apart, so the server never answers with GOAWAY "too_many_pings"."""
    import tritonclient.grpc as grpcclient

    return grpcclient.KeepAliveOptions(keepalive_time_ms=60_000, keepalive_timeout_ms=20_000,
                                       keepalive_permit_without_calls=False, http2_max_pings_without_data=2)


@dataclass(frozen=True)
class Progress:
    """One progress response of a stream: ``step`` of ``total`` denoising steps done, and at the request's
    ``preview_interval`` a PNG ``preview`` of the video predicted so far (a strip of a few frames at latent
    resolution), else None.

    Before its first step, while the request waits on the server: ``ahead``, the requests before it there
    (the running one included), and ``starts_in_s``, when it is expected to start (None: no estimate
    yet); ``step`` is then 0 and ``total`` not yet told (0). After it starts, ``ahead`` is None."""

    step: int
    total: int
    preview: bytes | None = None
    ahead: int | None = None
    starts_in_s: float | None = None

    @property
    def waiting(self) -> bool:
        return self.ahead is not None

    def place(self) -> str:
        """The wait in words: "queued on the server: 2 requests ahead, starting in about 40 s"."""
        requests = "1 request" if self.ahead == 1 else f"{self.ahead} requests"
        when = f"starting in about {self.starts_in_s:.0f} s" if self.starts_in_s is not None else "no estimate yet"
        return f"queued on the server: {requests} ahead, {when}"


@dataclass
class Video:
    frames: np.ndarray | None  # uint8 [F, H, W, 3], when requested
    mp4: bytes | None  # H.264 MP4, when requested
    cache_hit: bool | None = None  # the image's encodings came from the server's cache (None: not told)


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    buffer = io.BytesIO()  # a PIL image
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request_arrays(image: Any, prompt: str, stream: bool = False, **options: Any) -> dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays keyed by contract name (None options are left out);
    ``stream``: for the streaming model, which has options of its own (STREAM_OPTIONS)."""
    arrays = {
        "IMAGE": np.array([_image_bytes(image)], dtype=np.object_),
        "PROMPT": np.array([prompt.encode("utf-8")], dtype=np.object_),
    }
    known = OPTIONAL_INPUTS | STREAM_OPTIONS if stream else OPTIONAL_INPUTS
    for keyword, value in options.items():
        if keyword not in known:
            raise TypeError(f"unknown option {keyword!r}; options are {sorted(known)}")
        if value is None:
            continue
        spec = I2VGEN_XL_STREAM.input(known[keyword])
        if spec.datatype == "BYTES":
            arrays[spec.name] = np.array([str(value).encode("utf-8")], dtype=np.object_)
        else:
            values = list(value) if spec.dims != (1,) else [value]  # GUIDANCE_INTERVAL: (start, end)
            arrays[spec.name] = np.array(values, dtype=spec.numpy_dtype)
    return arrays


def _video(result) -> Video:
    encoded = result.as_numpy("VIDEO_MP4")
    hit = result.as_numpy("CACHE_HIT")
    return Video(frames=result.as_numpy("VIDEO"), mp4=bytes(encoded[0]) if encoded is not None else None,
                 cache_hit=bool(hit[0]) if hit is not None else None)


class _Wait:
    """Waits for the next event of a request, giving up when ``cancel`` is set or the deadline passes.
    Polls in short slices so Ctrl-C (KeyboardInterrupt), a cancel flag or the deadline all act at once."""

    def __init__(self, cancel: threading.Event | None, timeout_s: float | None):
        self.cancel, self.timeout_s = cancel, timeout_s
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.step = self.total = 0
        self.ahead: int | None = None  # while a stream waits on the server: the requests before it
        self.reports_steps = False  # only a stream tells the steps done; a plain call's wait knows nothing of them

    def check(self) -> None:
        where = ""
        if self.reports_steps:
            where = (f" after step {self.step}/{self.total}" if self.total
                     else f" while queued, {self.ahead} ahead" if self.ahead is not None else " before the first step")
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled(f"cancelled by the client{where}", self.step)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise GenerationTimeout(f"no video within the time limit of {self.timeout_s:g} s{where}; "
                                    "the request was cancelled", self.step)

    def next(self, events: queue.Queue):
        while True:
            self.check()
            try:
                return events.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def sleep(self, seconds: float) -> None:
        """A retry's backoff, cut short by a cancel (the next attempt then raises)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check()
            time.sleep(min(_POLL_S, max(0.0, end - time.monotonic())))


class Client:
    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str | None = None,
                 timeout_s: float | None = None, *, stream_model: str | None = None,
                 retry: RetryPolicy = RetryPolicy(),
                 on_retry: Callable[[int, float, GenerationError], None] | None = None):
        """``model`` serves ``generate`` (default i2vgen_xl), ``stream_model`` serves ``generate_stream``
        (default i2vgen_xl_stream). ``timeout_s``: the default time limit of one generation, retries
        included. ``on_retry(attempt, wait_s, error)`` hears of each retry."""
        if protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
        self.protocol, self.timeout_s = protocol, timeout_s
        self.model = model or I2VGEN_XL.name
        self.stream_model = stream_model or STREAM_MODEL
        self.retry, self.on_retry = retry, on_retry
        self.url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            import tritonclient.grpc as triton

            self._client = triton.InferenceServerClient(self.url, keepalive_options=_keepalive())
        else:
            import tritonclient.http as triton

            self._client = triton.InferenceServerClient(self.url, connection_timeout=timeout_s or 60.0,
                                                        network_timeout=timeout_s or 3600.0)
        self._triton = triton
        self._outputs: dict[str, set[str]] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        return self._client.is_model_ready(self.model)

    def is_reachable(self) -> bool:
        """Whether the server answers at all (tells "not reachable" from "busy" after an UNAVAILABLE)."""
        try:
            return bool(self._client.is_server_live())
        except Exception:  # noqa: BLE001 - any failure to answer means not reachable
            return False

    def model_parameters(self, model: str | None = None) -> dict[str, str]:
        """An entry model's config parameters (its defaults and limits)."""
        model = model or self.model
        if self.protocol == "grpc":
            config = self._client.get_model_config(model, as_json=True)["config"]
        else:
            config = self._client.get_model_config(model)
        # gRPC's JSON leaves out empty strings: a parameter set to "" arrives as {}.
        return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}

    def _served_outputs(self, model: str, wanted) -> list[str]:
        """The outputs of ``wanted`` that ``model`` has: any entry model can be named (--model), and one
        without PROGRESS or CACHE_HIT (a plain or an older one) refuses a request that asks for them."""
        from tritonclient.utils import InferenceServerException

        if model not in self._outputs:
            try:
                metadata = (self._client.get_model_metadata(model, as_json=True) if self.protocol == "grpc"
                            else self._client.get_model_metadata(model))
            except InferenceServerException as error:
                raise _error(error) from None
            except OSError as error:  # HTTP: the socket's own error (gRPC reports it as UNAVAILABLE)
                raise self._unreachable(error) from None
            self._outputs[model] = {output["name"] for output in metadata.get("outputs", [])}
        return [name for name in wanted if name in self._outputs[model]]

    def _unreachable(self, error: OSError) -> GenerationError:
        """A connection failure as the retryable error gRPC gives for it."""
        return GenerationError(f"server not reachable at {self.url}: {error.strerror or error}", "UNAVAILABLE")

    def _inputs(self, arrays: dict[str, np.ndarray]) -> list:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, array in arrays.items():
            infer_input = self._triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        return inputs

    def _with_retries(self, attempt: Callable[[_Wait], Any], cancel: threading.Event | None,
                      timeout_s: float | None) -> Any:
        wait = _Wait(cancel, timeout_s if timeout_s is not None else self.timeout_s)
        return self.retry.call(lambda: attempt(wait), self.on_retry, wait.sleep)

    def infer_arrays(self, arrays: dict[str, np.ndarray], outputs: tuple[str, ...] = ("VIDEO",), priority: int = 0,
                     *, model: str | None = None, cancel: threading.Event | None = None,
                     timeout_s: float | None = None):
        """A raw inference: contract-named input arrays in, the requested output arrays out.
        ``priority`` 1 is served before the default 2 when requests queue, where the operator turned priority
        on (export --priority; else every request queues in arrival order); 0: the model's default."""
        result = self._with_retries(
            lambda wait: self._infer_once(model or self.model, arrays, outputs, priority, wait), cancel, timeout_s
        )
        return {name: result.as_numpy(name) for name in outputs}

    def _infer_once(self, model: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...], priority: int,
                    wait: _Wait):
        from tritonclient.utils import InferenceServerException

        wait.check()
        outputs = self._served_outputs(model, outputs)
        if self.protocol == "http":
            requested = [self._triton.InferRequestedOutput(name, binary_data=True) for name in outputs]
            try:
                return self._client.infer(model, self._inputs(arrays), outputs=requested, priority=priority)
            except InferenceServerException as error:
                raise _error(error) from None
            except TimeoutError:
                raise GenerationTimeout(f"no video within the time limit of {wait.timeout_s:g} s") from None
            except OSError as error:
                raise self._unreachable(error) from None
        # gRPC: asynchronous, so that a cancel, the deadline or Ctrl-C can cancel the call (and the server
        # then stops the request) instead of blocking inside gRPC until the video is done.
        events: queue.Queue = queue.Queue()
        call = self._client.async_infer(
            model, self._inputs(arrays), callback=lambda result, error: events.put((result, error)),
            outputs=[self._triton.InferRequestedOutput(name) for name in outputs], priority=priority,
        )
        done = False
        try:
            result, error = wait.next(events)
            done = True
        finally:
            if not done:
                call.cancel()
        if error is not None:
            raise _error(error)
        return result

    def generate(self, image: Any, prompt: str, *, frames: bool = True, mp4: bool = False, priority: int = 0,
                 model: str | None = None, cancel: threading.Event | None = None, timeout_s: float | None = None,
                 **options: Any) -> Video:
        """Generates a video in one request. ``image``: encoded bytes, a path or a PIL image; options: see
        OPTIONAL_INPUTS (None: the server's default)."""
        wanted = tuple(name for name, flag in (("VIDEO", frames), ("VIDEO_MP4", mp4)) if flag)
        if not wanted:
            raise ValueError("ask for frames, mp4 or both")
        arrays = request_arrays(image, prompt, **options)
        result = self._with_retries(
            lambda wait: self._infer_once(model or self.model, arrays, wanted + ("CACHE_HIT",), priority, wait),
            cancel, timeout_s,
        )
        return _video(result)

    def generate_stream(
        self,
        image: Any,
        prompt: str,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        frames: bool = True,
        mp4: bool = False,
        priority: int = 0,
        model: str | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
        cancel_after_step: int | None = None,
        **options: Any,
    ) -> Video:
        """Like ``generate`` through the streaming model (gRPC only): ``on_progress(Progress)`` while it
        waits on the server (its place) and after each denoising step (with a preview every
        ``preview_interval`` steps, an option of this model).
        Setting ``cancel`` (or reaching ``cancel_after_step``) cancels the request: the server stops
        within a step, and GenerationCancelled is raised."""
        if self.protocol != "grpc":
            raise ValueError("streaming needs gRPC: Triton answers decoupled models over HTTP with 501")
        wanted = ["QUEUE", "PROGRESS", "PREVIEW", "CACHE_HIT"]
        wanted += [name for name, flag in (("VIDEO", frames), ("VIDEO_MP4", mp4)) if flag]
        arrays = request_arrays(image, prompt, stream=True, **options)
        if cancel_after_step is not None:
            cancel = cancel or threading.Event()
            inner = on_progress

            def on_progress(progress: Progress) -> None:
                if inner is not None:
                    inner(progress)
                if not progress.waiting and progress.step >= cancel_after_step:
                    cancel.set()

        return self._with_retries(
            lambda wait: self._stream_once(model or self.stream_model, arrays, wanted, priority, on_progress, wait),
            cancel, timeout_s,
        )

    def _stream_once(self, model: str, arrays: dict[str, np.ndarray], wanted: list[str], priority: int,
                     on_progress: Callable[[Progress], None] | None, wait: _Wait) -> Video:
        wait.reports_steps = True
        wait.check()
        wanted = self._served_outputs(model, wanted)
        events: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: events.put((result, error)))
        finished = False
        try:
            self._client.async_stream_infer(
                model, self._inputs(arrays), outputs=[self._triton.InferRequestedOutput(name) for name in wanted],
                priority=priority, enable_empty_final_response=True,
            )
            while True:
                result, error = wait.next(events)
                if error is not None:
                    finished = True  # the server has ended this request
                    raise _error(error, wait.step)
                place = result.as_numpy("QUEUE")
                if place is not None:
                    wait.ahead, starts_in_ms = (int(v) for v in place)
                    if on_progress is not None:
                        starts_in_s = starts_in_ms / 1000 if starts_in_ms >= 0 else None
                        on_progress(Progress(0, 0, ahead=wait.ahead, starts_in_s=starts_in_s))
                    continue
                progress = result.as_numpy("PROGRESS")
                if progress is not None:
                    wait.step, wait.total = (int(v) for v in progress)
                    if on_progress is not None:
                        preview = result.as_numpy("PREVIEW")
                        on_progress(Progress(wait.step, wait.total, bytes(preview[0]) if preview is not None else None))
                    continue
                final = result.get_response().parameters.get("triton_final_response")
                if result.as_numpy("VIDEO") is not None or result.as_numpy("VIDEO_MP4") is not None:
                    finished = True
                    return _video(result)
                if final is not None and final.bool_param:
                    finished = True
                    raise GenerationError("the stream ended without a video", after_step=wait.step)
        finally:
            # Anything else (a cancel, the deadline, Ctrl-C) leaves the request running on the server
            # unless the stream is cancelled: then Triton marks it cancelled and the model stops it.
            self._client.stop_stream(cancel_requests=not finished)
