"""`openspeedy serve`'s options without a server: defaults from OPENSPEEDY_* variables, tritonserver flags
after '--', the exit timeout derived from the repository's longest request, and the probe's model list."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading

import pytest

from openspeedy import cli, probe
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, model_configs


def write_repository(root, max_request_seconds: float):
    settings = dataclasses.replace(TINY_SETTINGS, max_request_seconds=max_request_seconds)
    for name, text in model_configs(ExportOptions(settings=settings), 0.18125).items():
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    return root


@pytest.fixture
def captured(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_serve", lambda args: seen.setdefault("options", cli._server_options(args)) and 0)
    return seen


def test_flags_default_to_the_environment_and_tritonserver_flags_follow_the_separator(tmp_path, monkeypatch, captured):
    repository = write_repository(tmp_path / "models", 120.0)
    for name, value in {"MODEL_REPOSITORY": str(repository), "HOST": "0.0.0.0", "HTTP_PORT": "9000",
                        "TRITON_ROOT": "/opt/tritonserver", "CUDA_POOL_BYTES": "1024"}.items():
        monkeypatch.setenv(f"OPENSPEEDY_{name}", value)
    assert cli.main(["serve", "--grpc-port", "9001", "--", "--log-info=true", "--model-control-mode=none"]) == 0
    options = captured["options"]
    assert (options.model_repository, options.host, options.http_port, options.grpc_port) == (
        repository, "0.0.0.0", 9000, 9001)
    assert str(options.triton_root) == "/opt/tritonserver" and options.cuda_memory_pool_bytes == 1024
    assert options.extra_args == ["--log-info=true", "--model-control-mode=none"]
    assert options.exit_timeout_s == 120 + cli.EXIT_TIMEOUT_MARGIN_S


@pytest.mark.parametrize("limit, given, expected", [(0.0, None, cli.DEFAULT_EXIT_TIMEOUT_S), (59.5, None, 75),
                                                    (59.5, 7, 7)])
def test_exit_timeout_follows_the_longest_request(tmp_path, monkeypatch, captured, limit, given, expected):
    monkeypatch.delenv("OPENSPEEDY_EXIT_TIMEOUT_SECS", raising=False)
    repository = write_repository(tmp_path / "models", limit)
    argv = ["serve", "--model-repository", str(repository)] + (["--exit-timeout-secs", str(given)] if given else [])
    assert cli.main(argv) == 0
    assert captured["options"].exit_timeout_s == expected


def test_an_empty_repository_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"no model in .*empty"):
        cli.main(["serve", "--model-repository", str(tmp_path / "empty")])


def test_probe_lists_the_repositorys_models_and_reports_each_unready_one(tmp_path):
    repository = write_repository(tmp_path / "models", 0.0)
    models = probe.repository_models(repository)
    assert models == sorted(["i2vgen_xl", "i2vgen_xl_stream", "text_encoder", "image_encoder", "vae_encoder",
                             "unet", "vae_decoder"])
    with server_answering(health=503, models=400) as url:
        problems = probe.check(url, models, timeout_s=1)
        assert problems[0].startswith("server not ready") and len(problems) == 1 + len(models)
        assert problems[1] == "model 'i2vgen_xl' not ready: /v2/models/i2vgen_xl/ready answered 400"
        assert probe.check(url, [], timeout_s=1)[-1].startswith("no model to check")
        assert probe.main(["ready", "--url", url, "--model-repository", str(repository)]) == 1


def test_probe_takes_an_address_without_scheme_and_checks_every_model_by_default(capsys):
    with server_answering(health=200, models=200) as url:
        assert probe.main(["ready", "--url", url.removeprefix("http://")]) == 0
    assert capsys.readouterr().out == "ready: 7 models ready\n"


def test_probe_of_a_server_that_does_not_answer_says_so_in_one_line(capsys):
    assert probe.main(["ready", "--url", "127.0.0.1:9", "--timeout-s", "1"]) == 1  # nothing on the discard port
    assert capsys.readouterr().err.splitlines() == [
        "server not reachable at http://127.0.0.1:9: [Errno 111] Connection refused"]


@contextlib.contextmanager
def server_answering(health: int, models: int):
    """A loopback HTTP server answering every health path with ``health``, every model path with ``models``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(health if self.path.startswith("/v2/health/") else models)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
