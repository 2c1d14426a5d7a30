"""The GPU benchmarks' pieces, run on a CPU with the tiny architecture: the end-to-end script runs and
agrees with the reference pipeline it compares against (tests/server checks the served UNet's timing
adapter)."""

import json
import subprocess
import sys

from tests.helpers import ROOT

BENCH = ROOT / "bench"
SCRIPT = BENCH / "end_to_end.py"


def test_end_to_end_benchmark_on_a_cpu(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck"),
         "--sizes", "2x64x64,3x64x96", "--runtimes", "eager,eager-layout", "--steps", "2"],
        check=True, capture_output=True, timeout=600,
    )
    results = json.loads((tmp_path / "out" / "end_to_end.json").read_text())
    assert [(s["frames"], s["height"], s["width"]) for s in results["sizes"]] == [(2, 64, 64), (3, 64, 96)]
    for size in results["sizes"]:
        assert size["flops"] > 0
        reference, eager, layout = size["pipelines"]
        assert reference["pipeline"] == "diffusers" and reference["seconds"] > 0
        assert eager["pipeline"] == "openspeedy-eager" and eager["unet_ms"] > 0 and eager["unet_tflops"] > 0
        # float32 on a CPU: OpenSpeedy's denoising is the reference's arithmetic, step for step; the VAE
        # decodes several frames per call where the reference decodes one, which can move a rounding
        assert eager["latents_relative_l2"] == 0.0 and eager["max_abs_uint8"] <= 1 and eager["relative_l2"] < 1e-3
        assert layout["pipeline"] == "openspeedy-eager-layout" and layout["latents_relative_l2"] < 1e-5
