"""The client's reading of server errors and its retry policy (no server: errors as tritonclient raises them)."""

import pytest
from tritonclient.utils import InferenceServerException

from openspeedy.client.api import GenerationError, RetryPolicy, _error


def test_statuses_are_read_from_the_error_code():
    assert _error(InferenceServerException("queue full", status="StatusCode.UNAVAILABLE")).retryable
    assert _error(InferenceServerException("busy", status="503")).status == "UNAVAILABLE"
    refused = _error(InferenceServerException("invalid input 'HEIGHT': must be a multiple of 8, got 63", status="400"))
    assert (refused.status, refused.retryable, refused.input_name) == ("INVALID_ARGUMENT", False, "HEIGHT")
    failed = _error(InferenceServerException("model 'unet' failed", status="StatusCode.INTERNAL"))
    assert (failed.status, failed.retryable, failed.input_name) == ("INTERNAL", False, None)


def test_a_refusal_inside_a_stream_is_unavailable():
    """Triton's stream responses carry the message only; its queue-full refusal is still UNAVAILABLE."""
    error = _error(InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size"))
    assert error.retryable and "retry later" in str(error)
    assert _error(InferenceServerException("something else")).status is None


class Attempts:
    def __init__(self, *outcomes):
        self.outcomes, self.calls = list(outcomes), 0

    def __call__(self):
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else self.last
        self.last = outcome
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def busy(after_step: int = 0) -> GenerationError:
    return GenerationError("Exceeds maximum queue size", "UNAVAILABLE", after_step)


def test_unavailable_is_retried_with_growing_capped_waits_until_served():
    policy = RetryPolicy(attempts=6, initial_s=0.5, max_s=3.0)
    attempts, waits, heard = Attempts(busy(), busy(), busy(), busy(), "video"), [], []
    result = policy.call(attempts, on_retry=lambda n, wait, error: heard.append((n, error.status)), sleep=waits.append)
    assert result == "video" and attempts.calls == 5
    assert heard == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE"), (3, "UNAVAILABLE"), (4, "UNAVAILABLE")]
    for n, wait in enumerate(waits):
        assert min(0.5 * 2**n, 3.0) <= wait <= 3.0, waits


def test_retries_stop_at_the_cap_with_the_servers_error():
    attempts = Attempts(busy())
    with pytest.raises(GenerationError, match="Exceeds maximum queue size"):
        RetryPolicy(attempts=3, initial_s=0.01, max_s=0.01).call(attempts, sleep=lambda s: None)
    assert attempts.calls == 3


@pytest.mark.parametrize("error", [GenerationError("invalid input 'WIDTH': too large", "INVALID_ARGUMENT"),
                                   GenerationError("cancelled", "CANCELLED"), busy(after_step=3)],
                         ids=["bad input", "cancelled", "stopped after starting"])
def test_other_errors_are_not_retried(error):
    attempts = Attempts(error)
    with pytest.raises(GenerationError):
        RetryPolicy(attempts=5, initial_s=0.01).call(attempts, sleep=lambda s: None)
    assert attempts.calls == 1


def generate_command(capsys, *arguments: str) -> tuple[int, str]:
    """`openspeedy generate` with ``arguments``: its exit status and what it wrote to stderr."""
    import argparse

    from openspeedy.client import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    status = cli.run(parser.parse_args(["--prompt", "x", *arguments]))
    return status, capsys.readouterr().err


def test_a_missing_image_file_is_one_line(capsys, tmp_path):
    status, err = generate_command(capsys, "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "v.mp4"))
    assert status == 2 and err == f"--image {tmp_path / 'nope.png'}: no such file\n"


def test_an_unreachable_http_server_is_one_line(capsys, tmp_path):
    from openspeedy.client import example_image

    status, err = generate_command(capsys, "--image", str(example_image()), "--out", str(tmp_path / "v.mp4"),
                                   "--protocol", "http", "--url", "127.0.0.1:9", "--retries", "0")
    assert status == 1
    assert err.splitlines() == ["error: server unavailable (busy, restarting or not reachable), retry later: "
                                "server not reachable at 127.0.0.1:9: Connection refused"]


def test_a_plain_calls_timeout_does_not_claim_a_step():
    import queue

    from openspeedy.client.api import GenerationTimeout, _Wait

    wait = _Wait(None, 0.01)
    with pytest.raises(GenerationTimeout) as caught:
        wait.next(queue.Queue())
    assert str(caught.value) == "no video within the time limit of 0.01 s; the request was cancelled"
    wait.reports_steps = True  # a stream: its progress says where it stopped
    with pytest.raises(GenerationTimeout, match="before the first step"):
        wait.check()
