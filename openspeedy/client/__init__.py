"""Python client for OpenSpeedy over gRPC or HTTP: ``Client(...).generate(image, prompt)``."""

from openspeedy.client.api import Client, GenerationError, Video

__all__ = ["Client", "GenerationError", "Video"]
