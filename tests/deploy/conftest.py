"""The chart's tools as fixtures for every module here (test_deploy.py defines them)."""

from tests.deploy.test_deploy import helm, kubernetes_validate  # noqa: F401 - fixtures
