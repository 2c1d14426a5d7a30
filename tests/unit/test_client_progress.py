"""A stream's progress as the client hands it on: its place while it waits on the server, then steps."""

from openspeedy.client.api import Progress


def test_a_waiting_request_says_its_place_and_when_it_starts():
    assert Progress(0, 0, ahead=1, starts_in_s=41.6).place() == (
        "queued on the server: 1 request ahead, starting in about 42 s")
    assert Progress(0, 0, ahead=3).place() == "queued on the server: 3 requests ahead, no estimate yet"
    assert Progress(0, 0, ahead=0, starts_in_s=0.0).waiting


def test_a_step_is_not_a_wait():
    step = Progress(4, 50)
    assert not step.waiting and step.ahead is None and step.starts_in_s is None
