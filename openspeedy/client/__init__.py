"""Python client for OpenSpeedy over gRPC or HTTP: ``Client(...).generate(image, prompt)``."""

from pathlib import Path

from openspeedy.client.api import (
    Client,
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    Progress,
    RetryPolicy,
    Video,
)

__all__ = ["Client", "GenerationCancelled", "GenerationError", "GenerationTimeout", "Progress", "RetryPolicy", "Video",
           "example_image"]


def example_image() -> Path:
    """The bundled example image (a lighthouse), for the demo, the web UI's example and the tests."""
    return Path(__file__).parent / "example.png"
