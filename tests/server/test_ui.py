"""`openspeedy ui` end to end: Debian's chromium driven by Playwright, and gradio_client on its API,
against a real tritonserver on the tiny repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from openspeedy.client import Client as OpenSpeedyClient
from openspeedy.client import GenerationCancelled, example_image
from openspeedy.video import decode_video
from tests.helpers import PortForwarder, free_port
from tests.server.serving_checks import LogTail, in_flight, wait_until

pytestmark = pytest.mark.server
CHROMIUM = "/usr/bin/chromium"
# Without the networking flags chromium keeps calling home, which nothing answers here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TRITON_LOG = "build/test-logs/triton.log"  # the session server's (tests/conftest.py)
DONE = "() => document.querySelector('#status')?.innerText.startsWith('Done')"


@contextlib.contextmanager
def openspeedy_ui(server_url: str, log: Path):
    """`openspeedy ui` as a user starts it, on a free port, a client of the server at ``server_url``."""
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "openspeedy.cli", "ui", "--port", str(port), "--server", server_url],
            stdout=output, stderr=subprocess.STDOUT, env=os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"},
        )
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"openspeedy ui exited: {log.read_text()}")
        try:
            return urllib.request.urlopen(url, timeout=5).status == 200
        except OSError:
            return False

    try:
        wait_until(answers, 120, "the UI to answer", every=0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def ui(triton, tmp_path_factory):
    with openspeedy_ui(triton.grpc_url, tmp_path_factory.mktemp("ui") / "ui.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK) or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, accept_downloads=True, viewport={"width": 1280, "height": 1100},
        )
        context.set_default_timeout(180_000)  # the tiny model on a busy 2-core machine
        yield context
        context.close()


@pytest.fixture
def page(browser, ui):
    page = browser.new_page()
    page.goto(ui)
    page.wait_for_selector("#generate")
    yield page
    page.close()


def fill(page, prompt: str = "a lighthouse by the sea", **numbers) -> None:
    if not page.locator("#image img").count():
        page.locator("#image input[type=file]").set_input_files(str(example_image()))
        page.wait_for_selector("#image img")
    page.locator("#prompt textarea").fill(prompt)
    for name, value in numbers.items():
        page.locator(f"#{name} input").fill(str(value))


def watch_progress(page) -> None:
    """Records every value the progress bar shows (window.progressSeen)."""
    page.evaluate("""() => {
        window.progressSeen = [];
        new MutationObserver(() => {
            const bar = document.querySelector('#progress progress');
            if (bar && window.progressSeen.at(-1) !== +bar.value) window.progressSeen.push(+bar.value);
        }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
    }""")


def test_a_generation_shows_progress_a_playable_video_downloads_then_the_cache_note(page, tmp_path):
    # 72x56: a size no other test asks for, so the first run is the image's first at it.
    fill(page, num_frames=8, height=56, width=72, num_inference_steps=12, seed=1)
    watch_progress(page)
    page.click("#generate")
    page.wait_for_function(DONE)
    assert page.inner_text("#status").startswith("Done: 8 frames of 72x56")
    seen = page.evaluate("window.progressSeen")
    assert seen == sorted(seen) and seen[-1] == 12 and len(set(seen)) > 3, seen  # it advanced, step by step
    assert page.inner_text("#cache-note").strip() == ""

    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#video video');"
        " return v && v.readyState >= 1 && v.duration > 0 && v.duration; }").json_value()
    assert duration == pytest.approx(8 / 16, abs=0.07)  # 8 frames at the default 16 fps: chromium can play it
    with page.expect_download() as mp4:
        page.click("#download-mp4")
    assert decode_video(open(mp4.value.path(), "rb").read()).shape == (8, 56, 72, 3)
    with page.expect_download() as gif:
        page.click("#download-gif")
    assert decode_video(open(gif.value.path(), "rb").read(), ".gif").shape == (8, 56, 72, 3)

    fill(page, prompt="the same lighthouse at night", seed=2)
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status')?.innerText.startsWith('Sending')"
                           " || document.querySelector('#status')?.innerText.startsWith('Denoising')")
    page.wait_for_function(DONE)
    assert "came from the server's cache" in page.inner_text("#cache-note")


def test_the_preview_changes_during_a_generation_and_the_video_replaces_it(page):
    fill(page, num_frames=4, height=64, width=64, num_inference_steps=20, seed=5, preview_interval=2)
    page.evaluate("""() => {
        window.previewsSeen = [];
        new MutationObserver(() => {
            const image = document.querySelector('#preview img');
            if (image && image.src && window.previewsSeen.at(-1) !== image.src) window.previewsSeen.push(image.src);
        }).observe(document.body, {subtree: true, childList: true, attributes: true});
    }""")
    page.click("#generate")
    page.wait_for_function(DONE)
    seen = page.evaluate("window.previewsSeen")
    assert len(set(seen)) >= 2, seen  # shown in place, and it changed as the steps went
    assert not page.locator("#preview img").is_visible()  # the video took its place
    assert page.locator("#video video").count() == 1


def test_the_queue_position_shows_while_another_request_runs(page, triton):
    """Another client's long video runs; the page's request waits in the server's line and says so."""
    stop_other = threading.Event()

    def other() -> None:
        with OpenSpeedyClient(triton.grpc_url) as client, contextlib.suppress(GenerationCancelled):
            client.generate_stream(example_image(), "another client's video", cancel=stop_other, num_frames=32,
                                   height=256, width=256, num_inference_steps=100)

    running = threading.Thread(target=other)
    running.start()
    try:
        wait_until(lambda: in_flight(triton) == 1, 60, "the other client's request to run")
        fill(page, num_frames=2, height=64, width=64, num_inference_steps=2)
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#status')?.innerText"
                               ".startsWith('Queued on the server: 1 request ahead')")
        assert not page.locator("#error-server").is_visible()
    finally:
        stop_other.set()
        running.join(60)
    page.wait_for_function(DONE)  # its turn came once the other one was cancelled


def test_an_invalid_size_is_shown_beside_its_control(page):
    fill(page, num_frames=2, height=63, width=64, num_inference_steps=2)
    page.click("#generate")
    error = page.locator("#error-height")
    error.wait_for(state="visible")
    assert error.inner_text() == "invalid input 'HEIGHT': must be a multiple of 8, got 63"
    for other in ("server", "width", "num_frames", "image", "prompt"):
        assert not page.locator(f"#error-{other}").is_visible(), other
    control, message = page.locator("#height").bounding_box(), error.bounding_box()
    assert 0 <= message["y"] - (control["y"] + control["height"]) < 40  # right under the height field
    assert control["x"] - 1 <= message["x"] < control["x"] + control["width"]

    fill(page, height=64)
    page.click("#generate")
    error.wait_for(state="hidden")
    page.wait_for_function(DONE)


def test_the_approximations_start_off_and_their_errors_are_shown_beside_them(page):
    for name, default in (("feature_reuse_interval", 1), ("guidance_interval_start", 0), ("guidance_interval_end", 1)):
        assert float(page.locator(f"#{name} input").input_value()) == default, name  # the server's: off
    assert "not been measured" in page.inner_text("#approximations")

    fill(page, num_frames=2, height=64, width=64, num_inference_steps=2, guidance_interval_start=0.8,
         guidance_interval_end=0.2)
    page.click("#generate")
    interval = page.locator("#error-guidance_interval")
    interval.wait_for(state="visible")
    assert interval.inner_text() == ("invalid input 'GUIDANCE_INTERVAL': must be fractions of the steps with "
                                     "0 <= start < end <= 1, got (0.8, 0.2)")
    fields, message = page.locator("#guidance_interval_start").bounding_box(), interval.bounding_box()
    assert 0 <= message["y"] - (fields["y"] + fields["height"]) < 40  # right under the interval's fields

    fill(page, guidance_interval_start=0, guidance_interval_end=0.5, feature_reuse_interval=11)
    page.click("#generate")
    reuse = page.locator("#error-feature_reuse_interval")
    reuse.wait_for(state="visible")
    assert reuse.inner_text() == "invalid input 'FEATURE_REUSE_INTERVAL': must be between 1 and 10, got 11"
    assert not interval.is_visible() and not page.locator("#error-server").is_visible()

    fill(page, feature_reuse_interval=2)
    page.click("#generate")
    page.wait_for_function(DONE)
    assert not reuse.is_visible()


def test_cancel_stops_the_server_within_a_step(page, triton):
    log = LogTail(TRITON_LOG)
    fill(page, num_frames=16, height=128, width=128, num_inference_steps=100)
    page.click("#generate")
    page.wait_for_function("() => +document.querySelector('#progress progress')?.value >= 2")
    seen = int(page.locator("#progress progress").get_attribute("value"))
    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#status')?.innerText.startsWith('Cancelled')")
    stopped = wait_until(log.cancelled_after_step, 30, "the server to log the cancel")
    assert stopped <= seen + 2, (stopped, seen)
    assert f"Cancelled after step {stopped - 1}" in page.inner_text("#status") or \
        f"Cancelled after step {stopped}" in page.inner_text("#status")
    wait_until(lambda: in_flight(triton) == 0, 15, "the in-flight gauge to drop to 0")
    assert not page.locator("#download-mp4").is_visible()


def test_a_server_that_is_not_reachable_is_said_then_its_defaults_fill_in_when_it_answers(browser, triton,
                                                                                           tmp_path):
    port = free_port()
    nobody = f"127.0.0.1:{port}"
    with openspeedy_ui(nobody, tmp_path / "ui.log") as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#generate")
        page.locator("#waiting-for-server").wait_for(state="visible")
        fill(page, num_frames=2, height=64, width=64, num_inference_steps=2)
        page.click("#generate")
        error = page.locator("#error-server")
        error.wait_for(state="visible")
        # first the retries of the refused connection, then the verdict
        page.wait_for_function(
            "() => document.querySelector('#status')?.innerText.includes('The server is not reachable')")
        assert error.inner_text() == f"not reachable at {nobody}: is openspeedy serve running?"  # `...` as code
        assert not page.locator("#error-height").is_visible()

        # The server appears at that address: the fields not typed in get its defaults, the typed ones stay.
        host, grpc_port = triton.grpc_url.rsplit(":", 1)
        with PortForwarder(port, (host, int(grpc_port))):
            page.locator("#waiting-for-server").wait_for(state="hidden")
            assert page.locator("#guidance_scale input").input_value() == "9"  # the model's default_guidance_scale
            assert page.locator("#num_frames input").input_value() == "2"
            page.click("#generate")
            page.wait_for_function(DONE)
            assert page.inner_text("#status").startswith("Done: 2 frames of 64x64")
        page.close()


def test_an_upload_over_the_limit_is_refused(ui):
    """The page's upload limit (32 MB by default): Gradio answers 413 and stores nothing."""
    import http.client
    import urllib.parse

    size, boundary = 33 * 2**20, "openspeedy-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    address = urllib.parse.urlsplit(ui)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.putrequest("POST", "/gradio_api/upload")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(len(head) + size + len(tail)))
    connection.endheaders()
    connection.send(head)
    chunk = bytes(2**16)
    for _ in range(size // len(chunk)):  # in pieces, as a browser sends it
        connection.send(chunk)
    connection.send(tail)
    response = connection.getresponse()
    assert response.status == 413
    assert response.read().decode() == "File size exceeded maximum allowed size of 33554432 bytes."
    connection.close()


def test_tabs_each_get_their_own_progress_and_result(browser, ui):
    tabs = []
    for frames, steps in ((4, 6), (6, 9)):
        tab = browser.new_page()
        tab.goto(ui)
        tab.wait_for_selector("#generate")
        fill(tab, num_frames=frames, height=64, width=64, num_inference_steps=steps, seed=frames)
        watch_progress(tab)
        tabs.append((tab, frames, steps))
    for tab, _, _ in tabs:
        tab.click("#generate")
    for tab, frames, steps in tabs:
        tab.wait_for_function(DONE)
        assert tab.inner_text("#status").startswith(f"Done: {frames} frames of 64x64")
        assert max(tab.evaluate("window.progressSeen")) == steps
        tab.close()


def test_the_generate_endpoint_returns_the_mp4(ui, triton):
    from gradio_client import Client, handle_file

    client = Client(ui, verbose=False)
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    names = [parameter["parameter_name"] for parameter in parameters]
    assert names[:2] == ["image", "prompt"]
    assert not parameters[0]["parameter_has_default"]
    assert all(parameter["parameter_has_default"] for parameter in parameters[2:])
    request = dict(num_frames=5, height=64, width=64, num_inference_steps=3, seed=5)
    path = client.predict(image=handle_file(str(example_image())), prompt="a lighthouse", **request,
                          api_name="/generate")
    exact = decode_video(open(path, "rb").read())
    assert exact.shape == (5, 64, 64, 3)

    # the approximations reach the server: the video is the one the Python client gets with them
    approximations = dict(feature_reuse_interval=3, guidance_interval_start=0.0, guidance_interval_end=0.5)
    path = client.predict(image=handle_file(str(example_image())), prompt="a lighthouse", **request, **approximations,
                          api_name="/generate")
    fast = decode_video(open(path, "rb").read())
    with OpenSpeedyClient(triton.grpc_url) as direct:
        served = direct.generate(example_image(), "a lighthouse", mp4=True, frames=False, **request,
                                 feature_reuse_interval=3, guidance_interval=(0.0, 0.5)).mp4
    assert np.array_equal(fast, decode_video(served))
    assert not np.array_equal(fast, exact)
