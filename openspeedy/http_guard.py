"""The public HTTP port: a reverse proxy that refuses the requests tritonserver 2.51 cannot survive.

Tried against tritonserver 2.51 (the nvidia-pytriton 0.7.0 binary; the container's 24.10 has the same
HTTP front end):
- an inference request whose JSON shape has 2^32 or more elements (``"shape": [4294967296]``) kills the
  server with SIGSEGV;
- about 3.6 MB sent as 600,000 one-byte chunks (``Transfer-Encoding: chunked``) kills it too
  (CVE-2025-23310/23311, fixed in Triton 25.07);
- a 1 MB gzip body is inflated to 1 GiB before it is parsed, and the server keeps that memory;
- an integer out of its datatype's range in JSON data is truncated (2^32+3 for INT32 runs as 3).

Triton 2.51 has no option against any of these: ``--http-max-input-size`` (a bound on the HTTP body)
appeared in later releases (the launcher passes it where ``tritonserver --help`` lists it; 2.51's does
not); nothing bounds a shape or checks an integer's range. So the launcher runs tritonserver's HTTP
endpoint on a private loopback port and serves the public one with this guard (aiohttp, server and
client): it reads each request body, counting bytes as they arrive whatever the framing (Content-Length,
chunked) and after inflating gzip/deflate, refuses a body over the limit, checks the JSON header of an
inference request (the only part Triton parses itself), and forwards the request as one plain body with a
Content-Length. Everything else passes through unchanged: headers (the admin key included; none added, so
an answer is compressed only where the client asked for it with Accept-Encoding), status,
response bodies (streamed back as they come), keep-alive. gRPC was clean and is not proxied.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Iterator

import aiohttp
from aiohttp import web

# Triton's default in the releases that have --http-max-input-size. A request's image and prompts are
# far smaller; a larger limit is an option of `openspeedy serve`.
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
BINARY_HEADER = "Inference-Header-Content-Length"  # the binary tensor extension's JSON part, in bytes
INFER_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")

INTEGER_RANGES = {
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
ELEMENT_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4,
                 "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}
FLOAT_TYPES = {"FP16", "BF16", "FP32", "FP64"}
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the guard recomputes: never forwarded as they came.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


class BadRequest(ValueError):
    """A request the guard refuses; the message names the input and the rule."""


def check_inference_request(body: bytes, binary_header_length: str | None, max_elements: int) -> None:
    """Raises BadRequest unless the inference request's JSON header is one Triton 2.51 can take safely.

    ``max_elements`` bounds each input's element count: every element takes at least one byte of the body,
    so a larger shape is a lie about the data (and Triton 2.51 crashes on some)."""
    header_bytes, binary_bytes = body, 0
    if binary_header_length is not None:
        try:
            length = int(binary_header_length)
        except ValueError:
            raise BadRequest(f"{BINARY_HEADER} must be an integer, got '{binary_header_length[:40]}'") from None
        if not 0 <= length <= len(body):
            raise BadRequest(f"{BINARY_HEADER} {length} is outside the body of {len(body)} bytes")
        header_bytes, binary_bytes = body[:length], len(body) - length
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than Python's stack
        raise BadRequest(f"the request's JSON does not parse: {str(error)[:200]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs", []), list):
        raise BadRequest("the request's JSON must be an object whose 'inputs' is a list")
    binary_total = 0
    for position, tensor in enumerate(header.get("inputs", [])):
        binary_total += _check_input(tensor, position, max_elements)
    if binary_total > binary_bytes:
        raise BadRequest(f"the inputs' binary_data_size add up to {binary_total} bytes, but the body carries "
                         f"{binary_bytes} after its JSON header")


def _check_input(tensor: object, position: int, max_elements: int) -> int:
    """Checks one input; returns the bytes it claims in the binary part of the body."""
    if not isinstance(tensor, dict):
        raise BadRequest(f"input {position} must be a JSON object")
    name = f"input '{str(tensor.get('name', position))[:100]}'"
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadRequest(f"{name}: shape must be a list of non-negative integers, got {str(shape)[:100]}")
    if any(d > max_elements for d in shape) or math.prod(shape) > max_elements:
        raise BadRequest(f"{name}: shape {shape} has more elements than the request's body could carry "
                         f"(at most {max_elements})")
    elements = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{name}: parameters must be a JSON object")
    if "shared_memory_region" in parameters:
        return 0  # the data is in a registered region (registering one is restricted to the admin key)
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not _is_int(size) or size < 0:
            raise BadRequest(f"{name}: binary_data_size must be a non-negative integer, got {str(size)[:40]}")
        if datatype in ELEMENT_BYTES and size != elements * ELEMENT_BYTES[datatype]:
            raise BadRequest(f"{name}: binary_data_size {size} is not shape {shape} of {datatype} "
                             f"({elements * ELEMENT_BYTES[datatype]} bytes)")
        return size
    if "data" not in tensor:
        raise BadRequest(f"{name}: no data (neither 'data' nor a binary_data_size parameter)")
    count = 0
    for value in _flatten(tensor["data"]):
        count += 1
        if count > elements:
            break
        _check_element(name, datatype, value)
    if count != elements:
        raise BadRequest(f"{name}: shape {shape} has {elements} elements but data has "
                         f"{'more' if count > elements else count}")
    return 0


def _check_element(name: str, datatype: object, value: object) -> None:
    if datatype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[datatype]
        if not _is_int(value):
            raise BadRequest(f"{name}: {datatype} data must be integers, got {str(value)[:40]}")
        if not low <= value <= high:
            raise BadRequest(f"{name}: {value} is out of the range of {datatype} [{low}, {high}]")
    elif datatype == "BOOL" and not isinstance(value, bool):
        raise BadRequest(f"{name}: BOOL data must be true or false, got {str(value)[:40]}")
    elif datatype in FLOAT_TYPES and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadRequest(f"{name}: {datatype} data must be numbers, got {str(value)[:40]}")
    elif datatype == "BYTES" and not isinstance(value, str):
        raise BadRequest(f"{name}: BYTES data must be strings, got {str(value)[:40]}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten(data: object) -> Iterator[object]:
    """The elements of nested JSON lists, without recursion (the nesting is the client's to choose)."""
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _error(status: int, message: str) -> web.Response:
    """Triton's own error shape, so clients (tritonclient) report the message as they do Triton's."""
    # Not force_close(): aiohttp then reads and drops the rest of a refused body for a few seconds (its
    # lingering time) before it closes, so the client gets this answer instead of a reset connection.
    return web.json_response({"error": message}, status=status)


class HttpGuard:
    """The guard's aiohttp server on ``host:port``, forwarding to tritonserver's HTTP at ``upstream``
    (host:port), run on an event loop of its own in a thread of the launcher."""

    def __init__(self, host: str, port: int, upstream: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.host, self.port, self.upstream = host, port, upstream
        self.max_body_bytes = max_body_bytes
        self.refused = 0  # requests refused, for logs and tests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "HttpGuard":
        """Returns once the public port listens; raises what binding it raised."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as error:  # noqa: BLE001 - handed to start()'s caller
                failure.append(error)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="openspeedy-http-guard", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _start(self) -> None:
        # client_max_size bounds what request.read() gathers, counted as the bytes arrive (after aiohttp
        # has undone the chunked framing and inflated gzip/deflate): a bomb stops at the limit.
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self._forward)
        # No total timeout: a generation may run for minutes; a dead upstream is found at connect time.
        self._session = aiohttp.ClientSession(
            f"http://{self.upstream}", auto_decompress=False,
            # aiohttp's client would add the headers it sends by default where the client sent none; an added
            # "Accept-Encoding: gzip, deflate, br" makes tritonserver gzip its answer, which the guard passes on
            # as it came, to a client that never asked for it and cannot read it (perf_analyzer's libcurl).
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            # No idle connections to tritonserver: on SIGTERM it waits for every open HTTP connection to close
            # (up to its exit timeout), and a kept-alive idle one would hold a stop for seconds. Keep-alive stays
            # on the public side; a loopback connect per request costs little.
            connector=aiohttp.TCPConnector(limit=0, force_close=True))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._refuse(400, f"request body of {request.content_length} bytes is over the limit of "
                                     f"{self.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(400, f"request body over the limit of {self.max_body_bytes} bytes (counted after "
                                     "undoing chunked framing and gzip/deflate)")
        except aiohttp.ClientPayloadError as error:  # a bad chunk or a corrupt compressed body
            return self._refuse(400, f"request body could not be read: {error}")
        if request.method == "POST" and INFER_PATH.match(request.path):
            try:
                check_inference_request(body, request.headers.get(BINARY_HEADER), max(len(body), 1))
            except BadRequest as error:
                return self._refuse(400, str(error))
        # Content-Encoding too: the body was inflated above.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        response = None
        try:
            async with self._session.request(request.method, request.rel_url, headers=headers, data=body,
                                             allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP - {"content-length"}})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as error:
            if response is not None:
                raise  # headers already sent: only closing the connection can tell the client
            # Tritonserver is down (the launcher restarts it): every URL, /v2/health/ready included, says so.
            return _error(503, f"the inference server is not available (restarting): {error}")

    def _refuse(self, status: int, message: str) -> web.Response:
        self.refused += 1
        return _error(status, message)
