"""Hostile HTTP requests to the public port, one line each, and how to send them (raw sockets: the
requests must go out exactly as written, framing included). The guard (openspeedy/http_guard.py) must
answer each one with its status and a message holding ``expect``; tritonserver must not die of any.

Not merged with tests/server/hostile_inputs.py, which holds no request: these are whole HTTP requests
(framing, headers, JSON) that a client library would never send and that the guard must stop before
tritonserver parses them; those are tensor values, sent through tritonclient, that tritonserver accepts
and the models themselves must refuse by their limits."""

from __future__ import annotations

import http.client
import json
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

INFER = "/v2/models/i2vgen_xl/infer"
CHUNKED_WIRE_BYTES = 600_000  # CVE-2025-23310/23311: ~3.6 MB as 600,000 one-byte chunks killed Triton 2.51


def infer_json(*inputs: dict, pad_to: int = 0) -> bytes:
    """An inference request's JSON, padded with trailing spaces to ``pad_to`` bytes."""
    return json.dumps({"inputs": list(inputs)}).encode().ljust(pad_to)


def int32(name: str, value: int, shape: list[int] | None = None) -> dict:
    return {"name": name, "shape": [1] if shape is None else shape, "datatype": "INT32", "data": [value]}


def gzip_bomb(inflated_bytes: int = 2**30) -> bytes:
    """About 1 MB of gzip that inflates to ``inflated_bytes`` of zeros, made without holding them."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    block = bytes(2**20)
    parts = [deflate.compress(block) for _ in range(inflated_bytes // len(block))]
    return b"".join(parts) + deflate.flush()


def binary_request(shape: list[int], binary_data_size: int, payload: bytes) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "NUM_FRAMES", "shape": shape, "datatype": "INT32",
                                     "parameters": {"binary_data_size": binary_data_size}}]}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes | Callable[[], bytes]
    expect: str  # part of the error message
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)
    chunk_size: int = 0  # >0: sent with Transfer-Encoding: chunked, this many bytes a chunk
    path: str = INFER

    def payload(self) -> bytes:
        return self.body() if callable(self.body) else self.body


_BIN_BODY, _BIN_HEADERS = binary_request([2**32], 4, b"\0\0\0\2")
_BIN_HEADER = "Inference-Header-Content-Length"

CORPUS = [
    Hostile("shape 2^32", infer_json(int32("NUM_FRAMES", 2, [2**32])), "input 'NUM_FRAMES': shape"),
    Hostile("shape 2^62", infer_json(int32("NUM_FRAMES", 2, [2**62])), "input 'NUM_FRAMES': shape"),
    Hostile("shape 2^16 x 2^16", infer_json(int32("NUM_FRAMES", 2, [2**16, 2**16])), "input 'NUM_FRAMES': shape"),
    Hostile("shape 0 x 2^62", infer_json(int32("NUM_FRAMES", 2, [0, 2**62])), "input 'NUM_FRAMES': shape"),
    Hostile("negative shape", infer_json(int32("NUM_FRAMES", 2, [-1])), "non-negative"),
    Hostile("shape larger than data", infer_json(int32("NUM_FRAMES", 2, [3])), "has 3 elements but data has 1"),
    Hostile("INT32 2^32+3", infer_json(int32("NUM_FRAMES", 2**32 + 3)), "input 'NUM_FRAMES': 4294967299 is out of"),
    Hostile("INT32 -2^31-1", infer_json(int32("NUM_FRAMES", -(2**31) - 1)), "out of the range of INT32"),
    Hostile("INT32 float", infer_json(int32("NUM_FRAMES", 2.5)), "INT32 data must be integers"),
    Hostile("binary shape 2^32", _BIN_BODY, "input 'NUM_FRAMES': shape", headers=_BIN_HEADERS),
    Hostile("binary header past the body", b"{}", "outside the body", headers={_BIN_HEADER: "99"}),
    Hostile("deep JSON nesting", b"[" * 100_000 + b"]" * 100_000, "does not parse"),
    Hostile("gzip bomb 1 MB -> 1 GiB", gzip_bomb, "over the limit", headers={"Content-Encoding": "gzip"}),
    Hostile("Content-Length 1 TB", b"{}", "over the limit", headers={"Content-Length": str(10**12)}),
    Hostile("chunked over the limit", b"x" * (70 * 2**20), "over the limit", chunk_size=2**20),
    # Reassembled by the guard and forwarded as one body: Triton answers, the entry model names the input.
    Hostile("600,000 one-byte chunks", infer_json(int32("NUM_FRAMES", 0), pad_to=CHUNKED_WIRE_BYTES),
            "NUM_FRAMES", chunk_size=1),
]


def send(port: int, hostile: Hostile, timeout_s: float = 60.0) -> tuple[int, dict]:
    """Sends one request to 127.0.0.1:port as written; returns the status and the JSON answer."""
    body = hostile.payload()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", **hostile.headers}
    if hostile.chunk_size:
        headers["Transfer-Encoding"] = "chunked"
        step = hostile.chunk_size
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                          for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        headers.setdefault("Content-Length", str(len(body)))
        framed = body
    head = f"POST {hostile.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(head.encode() + framed)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the guard answered and closed before the whole body was out: its answer is still there
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read() or b"{}")
