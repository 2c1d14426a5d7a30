"""The live server exports the Triton metric families the Grafana dashboard queries."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.unit.test_dashboard import TRITON_METRICS


@pytest.mark.server
def test_triton_exports_the_dashboards_triton_metrics(triton):
    """The live server's metrics endpoint has every Triton family the dashboard queries (GPU ones aside)."""
    from openspeedy.client import Client
    from tests.helpers import encode, random_image

    with Client(triton.grpc_url, "grpc", timeout_s=120) as client:
        client.generate(encode(random_image(40, 40, seed=3)), "x", num_frames=1, height=32, width=32,
                        num_inference_steps=1, seed=1)
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    missing = TRITON_METRICS - exported
    assert not missing, f"tritonserver does not export {sorted(missing)}"
    assert re.search(r'^nv_inference_request_success\{[^}]*model="i2vgen_xl"', text, re.MULTILINE)
