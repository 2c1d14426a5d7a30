"""What the web UI does, without Gradio: one generation as a stream of page updates.

A generation runs ``Client.generate_stream`` in a worker thread and turns its progress, retries and
outcome into ``Update`` objects; errors are keyed by the control that caused them (the server's
bad-input errors name their input), so the page shows each beside its control.
"""

from __future__ import annotations

import io
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import PIL.Image

from openspeedy.client.api import (
    Client,
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    Progress,
    RetryPolicy,
)

DEFAULT_RETRY = RetryPolicy()  # frozen: one instance serves every session

# Contract input -> the page's control for it. "server" is the server address field: where not
# reachable, busy and other failures of the server itself are shown.
CONTROLS = {
    "IMAGE": "image",
    "PROMPT": "prompt",
    "NEGATIVE_PROMPT": "negative_prompt",
    "NUM_FRAMES": "num_frames",
    "HEIGHT": "height",
    "WIDTH": "width",
    "NUM_INFERENCE_STEPS": "num_inference_steps",
    "GUIDANCE_SCALE": "guidance_scale",
    "TARGET_FPS": "target_fps",
    "SEED": "seed",
    "DECODE_CHUNK_SIZE": "decode_chunk_size",
    # The opt-in approximations. The interval's error goes beside its two fields (start, end).
    "GUIDANCE_INTERVAL": "guidance_interval",
    "FEATURE_REUSE_INTERVAL": "feature_reuse_interval",
    "PREVIEW_INTERVAL": "preview_interval",
}
SERVER = "server"
ERROR_TARGETS = (SERVER, *CONTROLS.values())
INTEGER_OPTIONS = ("num_frames", "height", "width", "num_inference_steps", "target_fps", "seed", "decode_chunk_size",
                   "feature_reuse_interval", "preview_interval")
# The page's live preview: every this many steps unless the user picks another interval (0: none).
DEFAULT_PREVIEW_INTERVAL = 5
# The page's two fields of GUIDANCE_INTERVAL, and what an empty one means: from the first step, to the last.
INTERVAL_FIELDS = {"guidance_interval_start": 0.0, "guidance_interval_end": 1.0}

# How long a finished video's files stay on disk: the page links them until then.
DEFAULT_KEEP_FILES_S = 3600.0

CACHE_NOTE = "This image's encodings came from the server's cache: its image-only work was skipped."


@dataclass
class Update:
    """One change of the page. ``errors`` maps a control (ERROR_TARGETS) to its message; a control
    left out has no error. ``done`` marks the last update of a generation."""

    status: str = ""
    progress: tuple[int, int] | None = None
    preview: PIL.Image.Image | None = None  # the video predicted so far (a strip of a few frames)
    errors: dict[str, str] = field(default_factory=dict)
    mp4: Path | None = None
    gif: Path | None = None
    cache_hit: bool | None = None
    done: bool = False


def request_options(values: dict[str, Any]) -> dict[str, Any]:
    """The client's options from the page's values: empty fields are left to the server's defaults.

    The guidance interval is one input of two fields: both empty leave it to the server; one empty
    stands for its end of the whole range (0 or 1)."""
    values = dict(values)
    bounds = {name: values.pop(name, None) for name in INTERVAL_FIELDS}
    options: dict[str, Any] = {}
    if any(bound not in (None, "") for bound in bounds.values()):
        options["guidance_interval"] = tuple(edge if bounds[name] in (None, "") else float(bounds[name])
                                             for name, edge in INTERVAL_FIELDS.items())
    for name, value in values.items():
        if value is None or value == "":
            continue
        if name in INTEGER_OPTIONS:
            value = int(value)
        elif name == "guidance_scale":
            value = float(value)
        options[name] = value
    # A preview interval past the steps would be refused: the page's default then previews the last step.
    steps = options.get("num_inference_steps")
    if steps and options.get("preview_interval", 0) > steps:
        options["preview_interval"] = steps
    return options


class CancelFlags:
    """One cancel flag per browser session (tab): Cancel in one tab stops only that tab's generation."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            flag = self._flags[session] = threading.Event()
            return flag

    def cancel(self, session: str) -> bool:
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


class Generations:
    """Runs generations against one Triton server (gRPC address ``server_url``); files go to ``output_dir``
    and are deleted ``keep_files_s`` after they were written."""

    def __init__(self, server_url: str, output_dir: Path | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 timeout_s: float | None = None, keep_files_s: float = DEFAULT_KEEP_FILES_S):
        self.server_url, self.retry, self.timeout_s = server_url, retry, timeout_s
        self.keep_files_s = keep_files_s
        # Under the system's temporary folder: Gradio serves output files from there.
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="openspeedy-ui-"))
        self.cancels = CancelFlags()

    def server_defaults(self) -> dict[str, str]:
        """The streaming model's config parameters (defaults and limits), or {} when it cannot be asked."""
        try:
            with Client(self.server_url, retry=RetryPolicy(attempts=1)) as client:
                return client.model_parameters(client.stream_model)
        except Exception:  # noqa: BLE001 - the page then leaves every default to the server
            return {}

    def run(self, session: str, image: str | Path | None, prompt: str | None, **values: Any) -> Iterator[Update]:
        if not image:
            yield Update(status="Upload an image first.", errors={"image": "upload an image (PNG, JPEG, WebP or BMP)"},
                         done=True)
            return
        try:
            options = request_options(values)
        except (TypeError, ValueError) as error:
            yield Update(status="A field holds a value that is not a number.", errors={SERVER: str(error)}, done=True)
            return
        cancel = self.cancels.start(session)
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._generate, args=(image, prompt or "", options, cancel, events),
                                  daemon=True)
        worker.start()
        try:
            yield Update(status="Sending the request…", progress=(0, options.get("num_inference_steps") or 0))
            while True:
                update = events.get()
                yield update
                if update.done:
                    return
        finally:
            # The page stopped listening (tab closed, app stopping): stop the server's work as well.
            cancel.set()
            self.cancels.finish(session, cancel)

    def cancel(self, session: str) -> bool:
        return self.cancels.cancel(session)

    def _generate(self, image, prompt: str, options: dict[str, Any], cancel: threading.Event,
                  events: queue.Queue) -> None:
        def on_retry(attempt: int, wait_s: float, error: GenerationError) -> None:
            # Both a full queue and a server that is down are worth another try; the page says which.
            if client.is_reachable():
                state, why = "busy", "busy: its queue is full, retrying"
            else:
                state, why = "not reachable", (f"not reachable at {self.server_url}, retrying: "
                                               "is `openspeedy serve` running?")
            events.put(Update(status=f"Server {state}; trying again in {wait_s:.1f} s (attempt {attempt + 1} "
                                     f"of {self.retry.attempts}).",
                              errors={SERVER: why}))

        def on_progress(progress: Progress) -> None:
            if progress.waiting:
                events.put(Update(status=f"{progress.place().capitalize()}."))
                return
            preview = PIL.Image.open(io.BytesIO(progress.preview)) if progress.preview else None
            events.put(Update(status=f"Denoising: step {progress.step} of {progress.total}",
                              progress=(progress.step, progress.total), preview=preview))

        client = Client(self.server_url, retry=self.retry, on_retry=on_retry, timeout_s=self.timeout_s)
        try:
            video = client.generate_stream(image, prompt, on_progress=on_progress, frames=True, mp4=True,
                                           cancel=cancel, **options)
            events.put(self._finished(video, options, client))
        except Exception as error:  # noqa: BLE001 - every failure is shown on the page
            events.put(self._failed(error, client))
        finally:
            client.close()

    def _finished(self, video, options: dict[str, Any], client: Client) -> Update:
        from openspeedy.video import encode_gif

        self.delete_old_files()
        folder = self.output_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        mp4, gif = folder / "openspeedy.mp4", folder / "openspeedy.gif"
        mp4.write_bytes(video.mp4)
        fps = options.get("target_fps") or int(
            client.model_parameters(client.stream_model).get("default_target_fps", 16))
        gif.write_bytes(encode_gif(video.frames, fps))
        frames, height, width = video.frames.shape[:3]
        return Update(status=f"Done: {frames} frames of {width}x{height}.", mp4=mp4, gif=gif,
                      cache_hit=bool(video.cache_hit), done=True)

    def _failed(self, error: Exception, client: Client) -> Update:
        if isinstance(error, GenerationCancelled):
            return Update(status=f"Cancelled {str(error).removeprefix('cancelled by the client ')}; "
                                 "the server stopped the request.", done=True)
        if isinstance(error, GenerationTimeout):
            return Update(status="Timed out.", errors={SERVER: str(error)}, done=True)
        if not isinstance(error, GenerationError):
            return Update(status="Failed.", errors={SERVER: f"{type(error).__name__}: {error}"}, done=True)
        if error.input_name in CONTROLS:
            control = CONTROLS[error.input_name]
            return Update(status="The server refused the request: see the marked field.",
                          errors={control: str(error)}, done=True)
        if error.retryable and not client.is_reachable():
            return Update(status="The server is not reachable.",
                          errors={SERVER: f"not reachable at {self.server_url}: is `openspeedy serve` running?"},
                          done=True)
        if error.retryable:
            return Update(status="The server is busy.",
                          errors={SERVER: f"busy after {self.retry.attempts} attempts; try again later ({error})"},
                          done=True)
        return Update(status="The generation failed.", errors={SERVER: str(error)}, done=True)

    def delete_old_files(self) -> list[Path]:
        """Deletes the videos written more than ``keep_files_s`` ago; returns their folders."""
        deadline = time.time() - self.keep_files_s
        old = [folder for folder in self.output_dir.iterdir() if folder.is_dir() and folder.stat().st_mtime < deadline]
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return old

    def generate_file(self, image: str | Path, prompt: str, **values: Any) -> Path:
        """The API's generate: the MP4's path, or GenerationError (its message names a bad input)."""
        result = None
        for update in self.run(f"api-{uuid.uuid4().hex}", image, prompt, **values):
            result = update
        if result is None or result.mp4 is None:
            raise GenerationError(_first_error(result))
        return result.mp4


def _first_error(update: Update | None) -> str:
    if update is None:
        return "no result"
    return "; ".join(update.errors.values()) or update.status
