"""Hypothesis fuzzing of the public contract against the real server, over gRPC and HTTP.

Each example starts from a small valid request and changes up to three of its inputs: random bytes or
corrupt files as IMAGE, random UTF-8 or invalid bytes as prompts, random integers including the type's
extremes for every INT32/INT64 input, NaN/inf/negative guidance, wrong dtypes, wrong shapes, missing
inputs and unknown extra inputs. An oracle (the contract's rules, with the limits the server reports in its
config) says which inputs are bad. Then:

- no bad input: the request succeeds with a [F, H, W, 3] uint8 video of the requested (or default) size;
- some bad input: the request fails with a message naming one of the bad inputs (our validation's
  "invalid input 'X'" or Triton's own dtype/shape/unknown/missing refusal, which also names it);
- inputs whose fate the oracle cannot know (a truncated or bit-flipped image file) may go either way.

Valid values are drawn only from cheap ranges (few frames, small sizes, one or two steps), so an
example never asks for minutes of CPU work. Derandomized: the same examples every run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

from openspeedy.client import Client, GenerationError
from openspeedy.contracts import I2VGEN_XL
from openspeedy.export.repository import TINY_SETTINGS as S
from openspeedy.request import RequestSettings
from tests.helpers import encode, random_image

pytestmark = pytest.mark.server

EXAMPLES_PER_PROTOCOL = 80
REQUEST_TIMEOUT_S = 120.0

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# name: (lowest valid, highest valid, highest value drawn among the valid ones, default)
INT_FIELDS = {
    "NUM_FRAMES": (1, S.max_num_frames, 3, S.default_num_frames),
    "HEIGHT": (S.min_size, S.max_size, S.min_size + 40, S.default_height),
    "WIDTH": (S.min_size, S.max_size, S.min_size + 40, S.default_width),
    "NUM_INFERENCE_STEPS": (1, S.max_num_inference_steps, 2, S.default_num_inference_steps),
    "TARGET_FPS": (1, S.max_target_fps, S.max_target_fps, S.default_target_fps),
    "DECODE_CHUNK_SIZE": (0, S.max_decode_chunk_size, S.max_decode_chunk_size, S.default_decode_chunk_size),
    "FEATURE_REUSE_INTERVAL": (1, S.max_feature_reuse_interval, 3, S.default_feature_reuse_interval),
}

GOOD_IMAGES = [
    encode(random_image(40, 30, seed=1)),
    encode(random_image(30, 50, mode="RGBA", seed=2)),
    encode(random_image(64, 64, seed=3), "JPEG"),
    encode(random_image(33, 21, seed=4), "WEBP"),
    encode(random_image(24, 24, mode="L", seed=5), "BMP"),
]
BASE = {
    "IMAGE": np.array([GOOD_IMAGES[0]], dtype=np.object_),
    "PROMPT": np.array([b"a lighthouse at night"], dtype=np.object_),
    "NEGATIVE_PROMPT": np.array([b""], dtype=np.object_),
    "NUM_FRAMES": np.array([1], dtype=np.int32),
    "HEIGHT": np.array([S.min_size], dtype=np.int32),
    "WIDTH": np.array([S.min_size], dtype=np.int32),
    "NUM_INFERENCE_STEPS": np.array([1], dtype=np.int32),
    "GUIDANCE_SCALE": np.array([2.0], dtype=np.float32),
    "TARGET_FPS": np.array([8], dtype=np.int32),
    "SEED": np.array([7], dtype=np.int64),
    "DECODE_CHUNK_SIZE": np.array([0], dtype=np.int32),
    "GUIDANCE_INTERVAL": np.array([0.0, 1.0], dtype=np.float32),
    "FEATURE_REUSE_INTERVAL": np.array([1], dtype=np.int32),
}
OTHER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.float16, np.float32, np.float64,
                np.bool_, np.object_]
EXTRA_NAMES = ["EXTRA_INPUT", "VIDEO", "PROGRESS", "image_2"]


@dataclass
class FuzzRequest:
    arrays: dict[str, np.ndarray] = field(default_factory=lambda: dict(BASE))
    bad: set[str] = field(default_factory=set)  # inputs that must make the request fail
    maybe: set[str] = field(default_factory=set)  # inputs that may or may not make it fail
    changes: list[str] = field(default_factory=list)

    def expected_shape(self) -> tuple[int, int, int, int]:
        def value(name):
            return int(self.arrays[name][0]) if name in self.arrays else INT_FIELDS[name][3]

        return value("NUM_FRAMES"), value("HEIGHT"), value("WIDTH"), 3

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"FuzzRequest(changes={self.changes}, bad={sorted(self.bad)}, maybe={sorted(self.maybe)})"


# ------------------------------------------------------------------------------------------ strategies


def int_values(name: str, bits: int = 32) -> st.SearchStrategy[int]:
    lowest, highest = (INT32_MIN, INT32_MAX) if bits == 32 else (INT64_MIN, INT64_MAX)
    if name == "SEED":
        return st.one_of(st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]),
                         st.integers(INT64_MIN, INT64_MAX))
    low, high, cheap, _ = INT_FIELDS[name]
    extremes = sorted({lowest, lowest + 1, -1, 0, 1, low - 1, low, high + 1, highest - 1, highest})
    return st.one_of(
        st.integers(low, cheap),  # valid (and cheap) half of the time
        st.sampled_from([v for v in extremes if not cheap < v <= high]),
        st.integers(low, cheap),
        st.integers(lowest, low - 1),
        st.integers(high + 1, highest),
    )


def int_is_valid(name: str, value: int) -> bool:
    if name == "SEED":
        return value >= 0
    low, high, _, _ = INT_FIELDS[name]
    if name in ("HEIGHT", "WIDTH") and value % 8:
        return False
    return low <= value <= high


def guidance_is_valid(value: np.float32) -> bool:
    value = float(value)
    return math.isfinite(value) and 0.0 <= value <= S.max_guidance_scale


def text_is_valid(raw: bytes) -> bool:
    if len(raw) > S.max_prompt_bytes:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


TEXTS = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40).map(lambda text: text.encode("utf-8")),
    st.binary(max_size=40),
    st.sampled_from([b"\xff\xfe", b"\xe2\x82", b"\x00", "\u00e9t\u00e9 \U0001f30a".encode(),
                     b"x" * (S.max_prompt_bytes + 1), b"y" * S.max_prompt_bytes]),
)


FRACTIONS = st.one_of(st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.0000001, -1e-45, math.nan, math.inf]),
                      st.floats(0.0, 1.0, width=32), st.floats(width=32, allow_nan=True, allow_infinity=True))


@st.composite
def images(draw) -> tuple[bytes, str]:
    """(file, verdict): verdict "good", "bad" or "maybe"."""
    kind = draw(st.sampled_from(["good", "random", "truncated", "flipped", "empty"]))
    if kind == "good":
        return draw(st.sampled_from(GOOD_IMAGES)), "good"
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300)), "bad"
    if kind == "empty":
        return b"", "bad"
    source = draw(st.sampled_from(GOOD_IMAGES))
    if kind == "truncated":
        return source[: draw(st.integers(0, len(source) - 1))], "maybe"
    position = draw(st.integers(0, len(source) - 1))
    flipped = bytearray(source)
    flipped[position] ^= draw(st.integers(1, 255))
    return bytes(flipped), "maybe"


def wrong_dtype_array(spec, draw) -> np.ndarray:
    dtype = draw(st.sampled_from([d for d in OTHER_DTYPES if np.dtype(d) != spec.numpy_dtype]))
    if np.dtype(dtype) == np.object_:
        return np.array([b"1"], dtype=np.object_)
    return np.array([1], dtype=dtype)


def wrong_shape_array(spec, draw) -> np.ndarray:
    shape = draw(st.sampled_from([s for s in [(2,), (1, 1), (0,), (3,), (1, 2)] if s != spec.dims]))
    count = int(np.prod(shape))
    element = BASE[spec.name][0]
    return np.array([element] * count, dtype=spec.numpy_dtype).reshape(shape)


@st.composite
def fuzz_requests(draw) -> FuzzRequest:
    request = FuzzRequest()
    names = draw(st.lists(st.sampled_from(list(I2VGEN_XL.input_names) + ["<extra>"]), max_size=3, unique=True))
    for name in names:
        if name == "<extra>":
            extra = draw(st.sampled_from(EXTRA_NAMES))
            request.arrays[extra] = draw(st.sampled_from([
                np.array([1], dtype=np.int32), np.array([b"x"], dtype=np.object_), np.array([0.5], np.float32)]))
            request.bad.add(extra)
            request.changes.append(f"extra {extra}")
            continue
        spec = I2VGEN_XL.input(name)
        how = draw(st.sampled_from(["value"] * 5 + ["remove", "dtype", "shape"]))
        if how == "remove":
            del request.arrays[name]
            if not spec.optional:
                request.bad.add(name)
            request.changes.append(f"remove {name}")
            continue
        if how == "dtype":
            request.arrays[name] = wrong_dtype_array(spec, draw)
            request.bad.add(name)
            request.changes.append(f"{name} dtype {request.arrays[name].dtype}")
            continue
        if how == "shape":
            request.arrays[name] = wrong_shape_array(spec, draw)
            request.bad.add(name)
            request.changes.append(f"{name} shape {list(request.arrays[name].shape)}")
            continue
        if name == "IMAGE":
            data, verdict = draw(images())
            request.arrays[name] = np.array([data], dtype=np.object_)
            {"bad": request.bad, "maybe": request.maybe}.get(verdict, set()).add(name)
            request.changes.append(f"IMAGE {verdict} ({len(data)} bytes)")
        elif spec.datatype == "BYTES":
            raw = draw(TEXTS)
            request.arrays[name] = np.array([raw], dtype=np.object_)
            if not text_is_valid(raw):
                request.bad.add(name)
            request.changes.append(f"{name} {raw[:30]!r}{'...' if len(raw) > 30 else ''}")
        elif name == "GUIDANCE_INTERVAL":
            start, end = (np.float32(draw(FRACTIONS)) for _ in range(2))
            request.arrays[name] = np.array([start, end], dtype=np.float32)
            if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start < end <= 1.0):
                request.bad.add(name)
            request.changes.append(f"{name} ({start!r}, {end!r})")
        elif spec.datatype == "FP32":
            value = np.float32(draw(st.one_of(
                st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1.0, 0.0, 1.0, S.max_guidance_scale,
                                 S.max_guidance_scale + 0.5, 3.4e38, -3.4e38, 1e-45]),
                st.floats(width=32, allow_nan=True, allow_infinity=True),
                st.floats(0.0, 12.0, width=32))))
            request.arrays[name] = np.array([value], dtype=np.float32)
            if not guidance_is_valid(value):
                request.bad.add(name)
            request.changes.append(f"{name} {value!r}")
        else:
            value = draw(int_values(name, 64 if spec.datatype == "INT64" else 32))
            request.arrays[name] = np.array([value], dtype=spec.numpy_dtype)
            if not int_is_valid(name, value):
                request.bad.add(name)
            request.changes.append(f"{name} {value}")
    return request


# ------------------------------------------------------------------------------------------ the tests


def names_input(message: str, names: set[str]) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) for name in names)


@pytest.fixture(scope="module")
def clients(triton):
    opened = {"grpc": Client(triton.grpc_url, "grpc", timeout_s=REQUEST_TIMEOUT_S),
              "http": Client(triton.http_url, "http", timeout_s=REQUEST_TIMEOUT_S)}
    # the oracle's limits are the tiny export's: the server must say the same
    # over HTTP: gRPC's JSON config omits parameters whose string_value is empty
    served = RequestSettings.from_parameters(opened["http"].model_parameters())
    for name in ("min_size", "max_size", "max_num_frames", "max_num_inference_steps", "max_target_fps",
                 "max_decode_chunk_size", "max_guidance_scale", "max_prompt_bytes", "default_num_frames",
                 "default_height", "default_width", "default_num_inference_steps"):
        assert getattr(served, name) == getattr(S, name), f"server's {name} differs from TINY_SETTINGS"
    yield opened
    for client in opened.values():
        client.close()


@pytest.fixture(scope="module")
def stubs_before(triton):
    return {p.pid for p in psutil.Process(triton.process.pid).children(recursive=True)}


def check(client: Client, request: FuzzRequest) -> None:
    note(repr(request))
    try:
        frames = client.infer_arrays(request.arrays)["VIDEO"]
    except GenerationError as error:
        message = str(error)
        note(f"error: {message}")
        event("refused, as expected" if request.bad else "refused a maybe-bad input")
        assert request.bad or request.maybe, f"a valid request failed: {message}"
        assert names_input(message, request.bad | request.maybe), f"the error names no bad input: {message}"
        assert client._client.is_server_live()
        return
    assert not request.bad, f"accepted although {sorted(request.bad)} are bad"
    event("video" if not request.maybe else "video from a maybe-bad input")
    assert frames.dtype == np.uint8
    assert frames.shape == request.expected_shape()


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_PROTOCOL,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time; the failing example is printed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=False,
)


def _request(changes: dict, bad=(), remove=()) -> FuzzRequest:
    request = FuzzRequest(bad=set(bad), changes=[f"explicit {sorted(changes)} remove {sorted(remove)}"])
    request.arrays.update(changes)
    for name in remove:
        del request.arrays[name]
    return request


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@FUZZ_SETTINGS
@given(request=fuzz_requests())
@example(request=_request({}))
@example(request=_request({"GUIDANCE_SCALE": np.array([np.nan], np.float32)}, bad={"GUIDANCE_SCALE"}))
@example(request=_request({"NUM_FRAMES": np.array([INT32_MAX], np.int32),
                           "HEIGHT": np.array([INT32_MIN], np.int32)}, bad={"NUM_FRAMES", "HEIGHT"}))
@example(request=_request({"SEED": np.array([INT64_MAX], np.int64)}))
@example(request=_request({"SEED": np.array([INT64_MIN], np.int64)}, bad={"SEED"}))
@example(request=_request({"IMAGE": np.array([b"\x89PNG\r\n\x1a\n" + b"\x00" * 40], np.object_)}, bad={"IMAGE"}))
@example(request=_request({"PROMPT": np.array([b"\xc3\x28"], np.object_), "EXTRA": np.array([1], np.int32)},
                          bad={"PROMPT", "EXTRA"}))
@example(request=_request({}, bad={"IMAGE", "PROMPT"}, remove=("IMAGE", "PROMPT")))
def test_fuzzed_requests_succeed_or_name_a_bad_input(clients, stubs_before, protocol, request):
    check(clients[protocol], request)


def test_server_still_serves_after_fuzzing(triton, clients, stubs_before):
    """Runs after the fuzzing (file order): the server is ready, no stub died, a good request succeeds."""
    import urllib.request

    with urllib.request.urlopen(f"http://{triton.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    children = psutil.Process(triton.process.pid).children(recursive=True)
    alive = {p.pid for p in children if p.status() != psutil.STATUS_ZOMBIE}
    assert stubs_before <= alive, f"stub processes died: {sorted(stubs_before - alive)}"
    for client in clients.values():
        assert client.is_ready()
        frames = client.generate(GOOD_IMAGES[0], "after the storm", num_frames=2, height=32, width=40,
                                 num_inference_steps=2, seed=3).frames
        assert frames.shape == (2, 32, 40, 3)
