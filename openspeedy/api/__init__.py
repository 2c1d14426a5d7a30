"""``openspeedy api``: an OpenAI-compatible asynchronous video job API (``/v1/videos``) in front of the
streaming model. ``app`` answers HTTP, ``jobs`` keeps the jobs (Redis or this process), ``worker`` runs
them through ``openspeedy.client``."""
