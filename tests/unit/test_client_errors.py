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
