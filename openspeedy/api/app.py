"""The HTTP side: the official video job API's routes, inputs, JSON shapes and error objects.

A create request is checked as the entry model checks it (``openspeedy.request.parse_request``, with
the served model's own defaults and limits: the image is decoded under the same byte and pixel
limits) before a job exists, so a bad input is the request's 400 naming the field, never a failed job.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local names.

import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from openspeedy.api.eta import poll_after_ms, queued_completion
from openspeedy.api.jobs import COMPLETED, IN_PROGRESS, QUEUED, Job, UnknownCursor, new_job_id, page
from openspeedy.api.keys import LOCAL_OWNER, Keys
from openspeedy.api.worker import WorkerOptions, Workers
from openspeedy.client.api import Client, request_arrays
from openspeedy.errors import InvalidInput
from openspeedy.request import RequestSettings, parse_request

INT32 = {"ge": -(2**31), "le": 2**31 - 1}
# Contract inputs whose form field has another name.
FIELD_OF_INPUT = {"IMAGE": "input_reference", "HEIGHT": "size", "WIDTH": "size",
                  "GUIDANCE_INTERVAL": "guidance_interval_start"}
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
JOB_ID = re.compile(r"video_[0-9a-f]{32}")  # what new_job_id makes: nothing else reaches the store
# How long the served model's defaults and limits are reused before they are read again.
SETTINGS_TTL_S = 60.0


class ApiError(Exception):
    """An error answered as the official API does: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def not_found(video_id: str) -> ApiError:
    return ApiError(404, f"no video with id '{video_id}'", "video_id", "not_found")


class CreateVideoForm(BaseModel):
    """The create request's fields besides the image: the official ones, then the contract's other inputs."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what the video shows")
    input_reference: UploadFile | None = Field(None, description="the first frame: PNG, JPEG, WebP or BMP")
    model: str | None = Field(None, description="the served streaming model (default: the one this API serves)")
    size: str | None = Field(None, description="WIDTHxHEIGHT in pixels, multiples of 8 (default: the model's)")
    seconds: str | None = Field(None, description="length; frames = seconds x target_fps unless num_frames is sent")
    negative_prompt: str | None = None
    num_frames: int | None = Field(None, **INT32)
    num_inference_steps: int | None = Field(None, **INT32)
    guidance_scale: float | None = None
    target_fps: int | None = Field(None, **INT32)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    decode_chunk_size: int | None = Field(None, **INT32)
    feature_reuse_interval: int | None = Field(None, **INT32)
    guidance_interval_start: float | None = None
    guidance_interval_end: float | None = None


class ServedSettings:
    """The streaming model's defaults and limits, read from its config on the server."""

    def __init__(self, server_url: str, model: str):
        self.server_url, self.model = server_url, model
        self._lock = threading.Lock()
        self._settings: RequestSettings | None = None
        self._read_at = 0.0

    def get(self) -> RequestSettings:
        with self._lock:
            if self._settings is None or time.monotonic() - self._read_at > SETTINGS_TTL_S:
                try:
                    with Client(self.server_url, model=self.model) as client:
                        parameters = client.model_parameters(self.model)
                except Exception as error:  # noqa: BLE001 - any failure: the model server cannot be asked
                    if self._settings is not None:
                        return self._settings
                    raise ApiError(503, f"the model server ({self.server_url}) did not answer: {error}",
                                   code="service_unavailable", kind="server_error") from None
                self._settings, self._read_at = RequestSettings.from_parameters(parameters), time.monotonic()
            return self._settings


def contract_options(form: CreateVideoForm, settings: RequestSettings) -> dict[str, Any]:
    """The client's keyword arguments for the form: ``size`` and ``seconds`` become the contract's inputs."""
    options: dict[str, Any] = {name: getattr(form, name) for name in (
        "negative_prompt", "num_frames", "num_inference_steps", "guidance_scale", "target_fps", "seed",
        "decode_chunk_size", "feature_reuse_interval")}
    if form.size is not None:
        match = SIZE.match(form.size.strip())
        if match is None:
            raise ApiError(400, f"invalid 'size': must be WIDTHxHEIGHT in pixels, e.g. 1280x704; got {form.size!r}",
                           "size", "invalid_value")
        options["width"], options["height"] = int(match[1]), int(match[2])
    if form.num_frames is None and form.seconds is not None:
        try:
            seconds = float(form.seconds)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < 3600:
            raise ApiError(400, f"invalid 'seconds': must be a positive number of seconds, got {form.seconds!r}",
                           "seconds", "invalid_value")
        fps = form.target_fps if form.target_fps is not None else settings.default_target_fps
        options["num_frames"] = max(1, round(seconds * fps))
    if form.guidance_interval_start is not None or form.guidance_interval_end is not None:
        options["guidance_interval"] = (
            settings.default_guidance_interval_start if form.guidance_interval_start is None
            else form.guidance_interval_start,
            settings.default_guidance_interval_end if form.guidance_interval_end is None
            else form.guidance_interval_end,
        )
    return options


def field_of(input_name: str, form: CreateVideoForm) -> str:
    if input_name == "NUM_FRAMES" and form.num_frames is None and form.seconds is not None:
        return "seconds"
    return FIELD_OF_INPUT.get(input_name, input_name.lower())


def validated_job(form: CreateVideoForm, image: bytes, settings: RequestSettings, model: str, owner: str) -> Job:
    """The job of a create request, every input checked by the entry model's own rules."""
    if form.model not in (None, "", model):
        raise ApiError(400, f"invalid 'model': this API serves '{model}', got {form.model!r}", "model",
                       "model_not_found")
    try:
        request = parse_request(request_arrays(image, form.prompt, **contract_options(form, settings)), settings)
    except InvalidInput as error:
        raise ApiError(400, str(error), field_of(error.input_name, form), "invalid_value") from None
    options = {
        "negative_prompt": request.negative_prompt, "num_frames": request.num_frames, "height": request.height,
        "width": request.width, "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale, "target_fps": request.target_fps, "seed": request.seed,
        "decode_chunk_size": request.decode_chunk_size, "guidance_interval": list(request.guidance_interval),
        "feature_reuse_interval": request.feature_reuse_interval,
    }
    seconds = form.seconds if form.num_frames is None and form.seconds is not None else (
        f"{request.num_frames / request.target_fps:g}")
    return Job(id=new_job_id(), owner=owner, created_at=int(time.time()), model=model,
               size=f"{request.width}x{request.height}", seconds=seconds, prompt=request.prompt, options=options)


@dataclass
class ApiOptions:
    server_url: str = "127.0.0.1:8001"
    model: str = "i2vgen_xl_stream"
    keys: Keys = Keys([])
    max_jobs_per_key: int = 4
    keep_s: int = 3600
    concurrency: int = 2
    max_upload_bytes: int = 33 * 1024 * 1024  # the entry model's default image limit (32 MiB) and the fields


class RequestTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a request body over ``limit`` bytes (413) before or while it is read. Neither uvicorn nor
    Starlette bounds a body, so these lines do."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await too_large(self.limit)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestTooLarge()
            return message

        await self.app(scope, limited, send)


def too_large(limit: int) -> JSONResponse:
    return error_response(413, f"the request is larger than the limit of {limit} bytes (the image, "
                               "'input_reference', and the other fields together)", "input_reference",
                          "request_too_large")


def create_app(jobs, options: ApiOptions) -> FastAPI:
    workers = Workers(jobs, WorkerOptions(options.server_url, options.model, options.concurrency, options.keep_s))
    settings = ServedSettings(options.server_url, options.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        workers.start()
        yield
        workers.stop()  # the jobs running here go back to the queue

    app = FastAPI(title="OpenSpeedy video jobs", version="1", lifespan=lifespan,
                  description="OpenAI-compatible asynchronous video generation (image to video) on I2VGen-XL.")
    app.add_middleware(BodyLimit, limit=options.max_upload_bytes)
    bearer = HTTPBearer(auto_error=False, description="an API key of this server")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        param = str(first["loc"][-1]) if first.get("loc") else None
        return error_response(400, f"invalid '{param}': {first['msg']}", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if isinstance(error.__cause__, RequestTooLarge):
            return too_large(options.max_upload_bytes)
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestTooLarge)
    async def request_too_large(request: Request, error: RequestTooLarge):
        return too_large(options.max_upload_bytes)

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        if not options.keys.required:
            return LOCAL_OWNER
        if credentials is None:
            raise ApiError(401, "no API key was given: send it as 'Authorization: Bearer KEY'")
        owner = options.keys.owner(credentials.credentials)
        if owner is None:
            raise ApiError(401, "the API key is not valid", code="invalid_api_key")
        return owner

    Caller = Annotated[str, Depends(caller)]

    def owned_job(video_id: str, owner: str) -> Job:
        job = jobs.get(video_id) if JOB_ID.fullmatch(video_id) else None
        if job is None or job.owner != owner:  # another key's job is as unknown as a missing one
            raise not_found(video_id)
        return job

    @app.post("/v1/videos", summary="Create a video job")
    def create(owner: Caller, form: Annotated[CreateVideoForm, Form(media_type="multipart/form-data")]) -> dict:
        if form.input_reference is None:
            raise ApiError(400, "'input_reference' is required: the image the video starts from", "input_reference",
                           "missing_required_parameter")
        image = form.input_reference.file.read()
        job = validated_job(form, image, settings.get(), options.model, owner)
        if not jobs.create(job, image, options.max_jobs_per_key):
            raise ApiError(429, f"this API key has {options.max_jobs_per_key} videos queued or in progress, the "
                                "limit: wait for one to finish or delete one", code="rate_limit_exceeded",
                           kind="rate_limit_error")
        return job.public()

    @app.get("/v1/videos", summary="List video jobs")
    def list_videos(owner: Caller, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    order: Literal["asc", "desc"] = "desc") -> dict:
        try:
            found, has_more = page(jobs.owned(owner), after, limit, order)
        except UnknownCursor:
            raise not_found(after) from None
        data = [job.public() for job in found]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}

    @app.get("/v1/videos/{video_id}", summary="Retrieve a video job")
    def retrieve(owner: Caller, video_id: str, response: Response) -> dict:
        """The official fields. A queued job also has ``queue_position``: how many queued jobs the API's
        workers start before it (0: it is next); a job in progress that still waits in the server's line
        (behind other clients' requests), its place there; and, queued or running, ``estimated_completed_at`` (Unix
        time) once a running job gives a pace (openspeedy/api/eta.py). An unfinished job's answer has the
        ``openai-poll-after-ms`` header: how long to wait before asking again (eta.poll_after_ms)."""
        found = owned_job(video_id, owner)
        job = found.public()
        if job["status"] == QUEUED:
            ahead = jobs.ahead(video_id)
            if ahead is not None:  # None: a worker took it since
                job["queue_position"] = len(ahead)
                estimate = queued_completion(found, ahead, jobs.running())
                if estimate is not None:
                    job["estimated_completed_at"] = estimate
        if job["status"] in (QUEUED, IN_PROGRESS):
            response.headers["openai-poll-after-ms"] = str(poll_after_ms(job.get("estimated_completed_at")))
        return job

    @app.get("/v1/videos/{video_id}/content", summary="Download the MP4 of a completed video job, or its preview",
             response_class=Response, responses={200: {"content": {"video/mp4": {}, "image/png": {}}}})
    def content(owner: Caller, video_id: str, variant: Literal["video", "thumbnail"] = "video") -> Response:
        """``variant=thumbnail``: the latest live preview, a PNG strip of a few frames of the video as
        predicted at that step (rough colours, latent resolution), while the job runs and after it."""
        job = owned_job(video_id, owner)
        if variant == "thumbnail":
            preview = jobs.preview(video_id)
            if preview is None:
                raise ApiError(400 if job.status in (QUEUED, IN_PROGRESS) else 404,
                               f"video '{video_id}' has no thumbnail yet: its status is {job.status} and no "
                               "preview has been made", "variant", "video_not_ready")
            return Response(preview, media_type="image/png")
        data = jobs.content(video_id) if job.status == COMPLETED else None
        if data is None:
            raise ApiError(400 if job.status != COMPLETED else 404,
                           f"video '{video_id}' has no content: its status is {job.status}", "video_id",
                           "video_not_ready" if job.status != COMPLETED else "not_found")
        return Response(data, media_type="video/mp4")

    @app.delete("/v1/videos/{video_id}", summary="Delete a video job (cancels it while it runs)")
    def delete(owner: Caller, video_id: str) -> dict:
        owned_job(video_id, owner)
        jobs.delete(video_id)  # a worker running it sees it gone and cancels it on the server
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    return app

