"""The GPU benchmarks' pieces, run on a CPU with the tiny architecture as modules from the repository root:
the end-to-end script runs and agrees with the reference pipeline it compares against (the fp8 preset
skipped there, compared with `fast`; the tuned peer as diffusers' speed guide builds it), the UNet-call
script counts FLOPs and times each variant, the pipeline diagnostic accounts for every model call, the group
norm probe compiles under each Inductor setting (tests/server checks the served UNet's timing adapter)."""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

LAYOUT = "eager,+temporal_conv2d,+channels_last"  # the UNet's options, as the benchmarks spell them


def run_module(module: str, *args: str, timeout: int = 600) -> None:
    subprocess.run([sys.executable, "-m", module, "--smoke", *args], cwd=ROOT, check=True, capture_output=True,
                   timeout=timeout)


# fast and fp8 without compile (minutes on a CPU): fp8 is skipped there, the rest is fast's.
FAST, FP8 = "fast,-compile_mode", "fp8,-compile_mode"


def test_end_to_end_benchmark_on_a_cpu(tmp_path):
    run_module("bench.end_to_end", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck"),
               "--sizes", "2x64x64,3x64x96", "--peers", "diffusers", "--variants", f"eager;{LAYOUT};{FAST};{FP8}",
               "--steps", "2")
    results = json.loads((tmp_path / "out" / "end_to_end.json").read_text())
    assert [(s["frames"], s["height"], s["width"]) for s in results["sizes"]] == [(2, 64, 64), (3, 64, 96)]
    assert results["peers"] == ["diffusers"] and results["compile_cache_dir"] == ""
    for size in results["sizes"]:
        reference, eager, layout, fast, fp8 = size["pipelines"]
        assert reference["pipeline"] == "diffusers" and reference["seconds"] > 0
        assert all(isinstance(row["compile_s"], float) for row in size["pipelines"])
        assert eager["pipeline"] == "openspeedy-eager" and eager["speedup_vs_diffusers"] > 0
        # float32 on a CPU: OpenSpeedy's denoising is the reference's arithmetic, step for step; the VAE
        # decodes several frames per call where the reference decodes one, which can move a rounding
        assert eager["latents_relative_l2"] == 0.0 and eager["max_abs_uint8"] <= 1 and eager["relative_l2"] < 1e-3
        assert layout["pipeline"] == f"openspeedy-{LAYOUT}" and layout["latents_relative_l2"] < 1e-5
        assert "temporal_conv2d: applied (" in layout["recipe"][3] and "channels_last: applied (" in layout["recipe"][4]
        # The lossy preset against fast of the same edits: skipped on a CPU, so the same video.
        assert "fp8: skipped: FP8 needs compute capability 8.9+" in "\n".join(fp8["recipe"])
        assert fp8["speedup_vs_fast"] > 0 and fp8["relative_l2_vs_fast"] == 0.0 and fp8["psnr_db_vs_fast"] is None
        assert "speedup_vs_fast" not in fast and fast["latents_relative_l2"] < 1e-5


def test_an_unknown_peer_is_refused_naming_the_peers(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.end_to_end", "--smoke", "--out", str(tmp_path),
                             "--peers", "diffusers,diffusers-fast"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "--peers: unknown diffusers-fast; the peers are diffusers, diffusers-compile, diffusers-tuned" in (
        result.stderr)


def test_the_tuned_peer_is_diffusers_speed_guide_where_it_applies(tmp_path):
    """Built, not run (its max-autotune compile takes about 10 minutes on a 2-core CPU; the slow test runs it)."""
    from types import SimpleNamespace

    from bench.common import (
        SPEED_GUIDE_INDUCTOR,
        decode_chunk,
        ensure_checkpoint,
        reference_pipeline,
        reference_settings,
    )

    dtype = ensure_checkpoint(tmp_path / "ck", smoke=True)
    pipe = reference_pipeline(tmp_path / "ck", dtype, "diffusers-tuned")
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert pipe.vae.decode.__wrapped__.__name__ == "decode"  # torch.compile's wrapper of the bound method
    assert any(getattr(module, "fused_projections", False) for module in pipe.unet.modules())
    convs = [m.weight for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convs)
    assert all(parameter.is_contiguous() for parameter in pipe.unet.parameters())  # the UNet keeps its layout
    assert SPEED_GUIDE_INDUCTOR == dict(conv_1x1_as_mm=True, coordinate_descent_tuning=True, epilogue_fusion=False,
                                        coordinate_descent_check_all_directions=True)
    import torch._inductor.config as inductor

    before = {name: getattr(inductor, name) for name in SPEED_GUIDE_INDUCTOR}
    with reference_settings("diffusers-tuned"):
        assert {name: getattr(inductor, name) for name in SPEED_GUIDE_INDUCTOR} == SPEED_GUIDE_INDUCTOR
    assert {name: getattr(inductor, name) for name in SPEED_GUIDE_INDUCTOR} == before  # only while it runs
    with reference_settings("diffusers-compile"):
        assert {name: getattr(inductor, name) for name in SPEED_GUIDE_INDUCTOR} == before
    # Its decode replays a CUDA graph that overwrites its last output: all frames in one call.
    request = SimpleNamespace(num_frames=16)
    assert decode_chunk("diffusers-tuned", request) == 16 and decode_chunk("diffusers-compile", request) == 1
    with pytest.raises(ValueError, match="unknown peer 'diffusers-fast'"):
        reference_pipeline(tmp_path / "ck", dtype, "diffusers-fast")


def test_preview_cost_benchmark_times_videos_with_and_without_previews_on_a_cpu(tmp_path):
    run_module("bench.preview_cost", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck"),
               "--sizes", "2x64x64", "--steps", "4", "--preview-interval", "2,1", "--variant", "eager",
               "--repeats", "1")
    (size,) = json.loads((tmp_path / "out" / "preview_cost.json").read_text())["sizes"]
    runs = [(run["preview_interval"], run["previews"]) for run in size["runs"]]
    assert runs == [(0, 0), (2, 2), (1, 4)] and all(run["seconds"] > 0 for run in size["runs"])


def test_unet_calls_benchmark_ablates_on_a_cpu(tmp_path):
    """``--ablate``: the options, then the options without each of their techniques (and what needs it)."""
    ablated = "eager,+fuse_qkv,+temporal_conv2d,+channels_last_temporal_convs"
    run_module("bench.unet_calls", "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck"),
               "--size", "2x64x64", "--variants", "eager", "--ablate", ablated)
    results = json.loads((tmp_path / "out" / "unet_calls.json").read_text())
    assert results["flops"] > 0
    rows = {row["variant"]: row for row in results["calls"]}
    assert list(rows) == ["eager", ablated, f"{ablated},-fuse_qkv", f"{ablated},-temporal_conv2d",
                          f"{ablated},-channels_last_temporal_convs"]
    assert rows["eager"]["ms"] > 0 and rows["eager"]["tflops"] > 0
    for row in list(rows.values())[1:]:
        assert row["relative_l2_vs_eager"] < 1e-5
    assert rows[f"{ablated},-temporal_conv2d"]["options"] == {"fuse_qkv": "true"}  # its dependant went too
    recipe = rows[f"{ablated},-fuse_qkv"]["recipe"]
    assert recipe[0] == "fuse_qkv: skipped: off in these options"
    assert recipe[3].startswith("temporal_conv2d: applied (") and recipe[6].startswith("channels_last_temporal_convs: ")


def test_pipeline_phases_diagnostic_on_a_cpu(tmp_path):
    run_module("bench.diagnostics.pipeline_phases", "--out", str(tmp_path / "out"), "--checkpoint",
               str(tmp_path / "ck"), "--size", "4x64x64", "--variant", "eager", "--vae-decoder-compile-mode", "",
               "--steps", "3", "--chunks", "4,2")
    results = json.loads((tmp_path / "out" / "pipeline_phases.json").read_text())
    alone = results["calls_timed_alone"]
    calls = {name: model["calls"] for name, model in alone["models"].items()}
    assert calls == {"text_encoder": 2, "image_encoder": 1, "vae_encoder": 1, "unet": 3, "vae_decoder": 1}
    assert alone["whole_s"] >= sum(model["seconds"] for model in alone["models"].values())
    assert [(row["chunk"], row["frames_per_call"]) for row in results["decodes"]] == [
        (0, results["decode_plan"]["automatic_chunk"]), (4, 4), (2, 2)]


def test_group_norm_probe_on_a_cpu(tmp_path):
    run_module("bench.diagnostics.group_norm_probe", "--out", str(tmp_path / "out"))
    rows = json.loads((tmp_path / "out" / "group_norm_probe.json").read_text())["rows"]
    assert [row["settings"] for row in rows] == ["default", "prefer_nd_tiling", "coordinate_descent"]
    for row in rows:
        assert row["compile_s"] > 0 and row["total_us"] > 0 and row["kernels"]
