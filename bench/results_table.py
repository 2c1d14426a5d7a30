"""bench/results/README.md and docs/speed.md, rendered from the result files (so neither can go stale).

Results live one folder per card, the newest file per benchmark: ``bench/results/<card>/<benchmark>.json``
(``h100/end_to_end.json``, ``cpu/cache.json``); a new run replaces the file, and git keeps the old ones.
bench/results/README.md is bench/results_template.md with ``{{ CARD/NAME.json }}`` replaced by that file's
tables (device, driver, torch, date and note first, then its numbers); a file the template does not name
is appended at the end, so a new result always shows up. docs/speed.md is docs/speed_template.md with its
sections filled in by bench.speed_page.

Usage: python -m bench.results_table [--check]   (make results). --check: exit 1 where a page is stale.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEMPLATE = ROOT / "bench" / "results_template.md"
README = RESULTS / "README.md"
PLACEHOLDER = re.compile(r"\{\{\s*([\w.+-]+/[\w.+-]+\.json)\s*\}\}")
MISSING = "-"


def number(value: Any, digits: int = 3) -> str:
    """A cell: floats to ``digits`` significant digits (small ones in e-notation), the rest as text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def share(value: Any) -> str:
    return MISSING if value is None else f"{value:.1%}"


def gigabytes(value: Any) -> str:
    return MISSING if value is None else f"{value / 1e9:.2f}"


def milliseconds(value: Any) -> str:
    return MISSING if value is None else f"{value * 1e3:.1f}"


def ratio(value: Any) -> str:
    """A speed-up to three decimals: the targets are ratios like 1.3x, which three significant digits
    would show as met at 1.2973."""
    return MISSING if value is None else f"{value:.3f}"


def percent(value: Any) -> str:
    return MISSING if value is None else f"{value * 100:+.1f}%"


def compact(value: Any) -> str:
    """JSON with floats to 4 significant digits (float32 inputs read back as 0.6000000238418579)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(compact(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {compact(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else number(cell) for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def device(data: dict) -> str:
    if "gpus" in data:
        return ", ".join(data["gpus"])
    found = data.get("gpu") or data.get("device") or data.get("machine") or MISSING
    if isinstance(found, dict):  # perf_analyzer's report
        return f"{found.get('cpu', MISSING)}, {found.get('cpu_count', '?')} cores"
    return found


def description(data: dict) -> str:
    """What every result names: device, driver, torch, date, and what the weights or the workload are."""
    note = data.get("note") or "; ".join(filter(None, (data.get("model"), data.get("workload")))) or MISSING
    if isinstance(data.get("notes"), list) and data["notes"]:
        note = " ".join(data["notes"])
    row = [device(data), data.get("driver", MISSING), data.get("torch", MISSING), data.get("date", MISSING),
           note.replace("|", "/")]
    return table(("device", "driver", "torch", "date", "note"), [row])


# ---------------------------------------------------------------------------------------- per kind of file


def end_to_end(data: dict) -> list[str]:
    parts = [f"{data.get('steps', '?')} steps; variants: "
             + ", ".join(f"`{name}` {compact(options)}" for name, options in data.get("variants", {}).items())
             + ("; modes: " + ", ".join(f"`{name}` {compact(inputs)}" for name, inputs in data["modes"].items())
                if data.get("modes") else "")
             + (f"; OpenSpeedy's VAE decoder compiled ({data['vae_decoder_compile_mode']})"
                if data.get("vae_decoder_compile_mode") else "")
             + (f"; OpenSpeedy's VAE encoder compiled ({data['vae_encoder_compile_mode']})"
                if data.get("vae_encoder_compile_mode") else "")]
    for size in data["sizes"]:
        # Columns a run may lack (the tuned peer, the fp8 preset's comparison with fast) only where it has them.
        columns = [("pipeline", "pipeline", str), ("seconds", "seconds", number),
                   ("speed-up vs diffusers", "speedup_vs_diffusers", ratio),
                   ("vs diffusers-compile", "speedup_vs_diffusers-compile", ratio),
                   ("vs diffusers-tuned", "speedup_vs_diffusers-tuned", ratio),
                   ("video rel. L2 vs diffusers", "relative_l2", number),
                   ("rel. L2 vs exact", "relative_l2_vs_exact", number),
                   ("vs fast", "speedup_vs_fast", ratio), ("video rel. L2 vs fast", "relative_l2_vs_fast", number),
                   ("PSNR dB vs fast", "psnr_db_vs_fast", number), ("peak GB", "peak_bytes", gigabytes),
                   ("compile s", "compile_s", number), ("load + warm-up s", "load_and_warmup_s", number)]
        optional = {"speedup_vs_diffusers-tuned", "speedup_vs_fast", "relative_l2_vs_fast", "psnr_db_vs_fast"}
        columns = [column for column in columns if column[1] not in optional
                   or any(column[1] in row for row in size["pipelines"])]
        rows = [[cell(row.get(key)) for _, key, cell in columns] for row in size["pipelines"]]
        parts.append(f"{size['frames']} x {size['height']}x{size['width']}:\n\n"
                     + table((name for name, _, _ in columns), rows))
    return parts


def unet_calls(data: dict) -> list[str]:
    rate = ""
    if "matrix_tflops_before" in data:
        rate = (f" The card's {data.get('dtype', 'float16')} matrix rate in this run (an 8192-cube product on random "
                f"data): {data['matrix_tflops_before']:.0f} TFLOP/s before the first variant, "
                f"{number(data.get('matrix_tflops_after'))} after the last; shares are of the first.")
    parts = [f"One CFG call (batch {data.get('batch', 2)}), {data['frames']} frames {data['height']}x{data['width']}, "
             f"{data.get('dtype', 'float16')}; {data['flops'] / 1e12:.2f} TFLOP per call (FlopCounterMode)." + rate]
    parts.append(table(("variant", "ms / call", "TFLOP/s", "share of matrix rate", "rel. L2 vs eager",
                        "load + first call s", "peak GB"),
                       [[row["variant"], f"{row['ms']:.1f}", row["tflops"], share(row.get("share_of_matrix_rate")),
                         row.get("relative_l2_vs_eager"), row["load_and_first_call_s"],
                         gigabytes(row.get("peak_bytes"))] for row in data["calls"]]))
    if data.get("feature_reuse"):
        parts.append("Feature reuse (shallow path against the full one that keeps its deep features):\n\n" + table(
            ("variant", "full ms", "shallow ms", "shallow / full", "full rel. L2 vs eager",
             "shallow rel. L2 vs same step", "compile + capture s"),
            [[row["variant"], row["full_with_features_ms"], row["shallow_ms"], row["shallow_fraction"],
              row["full_relative_l2_vs_eager"], row["shallow_same_step_relative_l2"], row["compile_and_capture_s"]]
             for row in data["feature_reuse"]]))
    if data.get("temporal_attention"):
        parts.append("Temporal attention at the UNet's shapes (head size 64): the kernel against SDPA's backends:\n\n"
                     + table(("sequences x tokens x heads", "kernel ms", "kernel rel. L2", "sdpa cuDNN ms",
                              "sdpa flash ms", "sdpa efficient ms"),
                             [[f"{row['sequences']} x {row['tokens']} x {row['heads']}", row["kernel_ms"],
                               row["kernel_relative_l2"], row["sdpa_cudnn_ms"], row["sdpa_flash_ms"],
                               row["sdpa_efficient_ms"]] for row in data["temporal_attention"]]))
    return parts


def decode_and_encode(data: dict) -> list[str]:
    rows = []
    for row in data["vae_decode"]:
        video = f"{row['frames']} x {row['height']}x{row['width']}"
        if "auto_chunk" in row:
            cost = row["measured_cost"]
            rows.append([video, f"measured cost: {gigabytes(cost['fixed'])} GB + {gigabytes(cost['per_frame'])} "
                         f"GB / frame; budget {gigabytes(row['budget'])} GB", "", ""])
        elif "error" in row:
            rows.append([video, str(row["chunk"]), "error", row["error"][:60]])
        else:
            chunk = "all at once" if row["chunk"] == row["frames"] else str(row["chunk"])
            rows.append([video, chunk, row["seconds"], gigabytes(row["peak_bytes"])])
    parts = ["VAE decoding by chunk size:\n\n" + table(("video", "chunk", "seconds", "peak GB"), rows)]
    parts.append("What a latent-cache hit skips:\n\n" + table(
        ("image", "image encoder ms", "VAE encoder ms", "saved per hit ms"),
        [[f"{row['height']}x{row['width']}", milliseconds(row["image_encoder_s"]), milliseconds(row["vae_encoder_s"]),
          milliseconds(row["saved_per_hit_s"])] for row in data["image_work"]]))
    return parts


def gpu_serving(data: dict) -> list[str]:
    keys = [("in process s", "in_process_s"), ("in process after serving s", "in_process_s_after_serving"),
            ("in process, synchronized per UNet call s", "in_process_synchronized_per_step_s"),
            ("through Triton s", "served_s"), ("overhead vs in process", "overhead"),
            ("through the stream model s", "served_stream_s"), ("stream overhead vs in process", "stream_overhead"),
            ("server start to ready s", "server_start_s"),
            ("served denoising step s", "served_denoising_step_s"), ("Triton's unet call ms", "served_unet_call_ms"),
            ("served video = in-process video", "served_equals_in_process"),
            ("max uint8 difference", "max_abs_uint8_served_vs_in_process")]
    parts = [table(("", "value"), [[label, percent(data[key]) if key.endswith("overhead") else data[key]]
                                   for label, key in keys if key in data])]
    medians = [(side, data[key]) for side, key in (("in process", "in_process_unet_median_ms"),
                                                   ("served stub", "served_unet_stub_median_ms")) if key in data]
    if medians:
        names = sorted({name for _, values in medians for name in values})
        parts.append("Per UNet call, medians (ms):\n\n" + table(
            ["", *names], [[side, *(values.get(name) for name in names)] for side, values in medians]))
    return parts


def cache(data: dict) -> list[str]:
    return [table(("", "request s", "image work ms"),
                  [["cache off", data["cache_off"]["request_s"], milliseconds(data["cache_off"]["image_work_s"])],
                   ["cache on", data["cache_on"]["request_s"], milliseconds(data["cache_on"]["image_work_s"])],
                   ["saved per request", f"{milliseconds(data['saved_per_request_s'])} ms "
                    f"({data['saved_fraction'] * 100:.1f}%)", ""]])]


def step_overhead(data: dict) -> list[str]:
    return [f"{data['model']}, {data['size']}, videos of {' and '.join(map(str, data['steps']))} steps:\n\n"
            + table(("ms per step in process", "served", "overhead per step"),
                    [[data["in_process_step_ms"], data["served_step_ms"], data["overhead_per_step_ms"]]])]


def job_api_overhead(data: dict) -> list[str]:
    rows = [[row["repeat"], f"{row['stream_s']:.3g}", f"{row['job_api_s']:.3g}", "yes" if row["same_video"] else "no"]
            for row in data["runs"]]
    return [f"{data['size']}, {data['steps']} steps, a preview every {data['preview_interval']} on both paths; "
            f"server: {data['server']}:\n\n"
            + table(("repeat", "gRPC stream s", "job API s (create, poll, download)", "same video"), rows),
            f"Medians: stream {data['median_stream_s']:.3g} s, job API {data['median_job_api_s']:.3g} s: "
            f"{data['overhead_s']:+.3g} s ({data['overhead']:+.1%})."]


def startup(data: dict) -> list[str]:
    rows = [[start["run"], start["cache_files_before"], f"{start['ready_s']:.1f}"] for start in data["starts"]]
    lines = [f"`{data['variant']}` UNet at {data['shape']}:\n\n"
             + table(("start", "files in --cache-dir before", "ready s"), rows)]
    lines += [data[key] for key in ("how", "finding") if data.get(key)]
    return lines


def lossless_probe(data: dict) -> list[str]:
    """bench/diagnostics/lossless_probe.py: cuDNN's search against its heuristics, the CFG pair's shared
    layers at one row against two, torchao's FP8 linears against bf16 ones (all eager but the last)."""
    forward, prefix, decode = data["unet_forward"], data["shared_prefix"], data["vae_decode"]
    parts = [table(("measured", "cuDNN heuristics ms", "cuDNN benchmark ms"),
                   [["UNet forward (eager, OpenSpeedy's layout)", forward["heuristic_ms"], forward["benchmark_ms"]],
                    [f"VAE decode of {decode['frames']} frames, NCHW", decode["contiguous_heuristic_ms"],
                     decode["contiguous_benchmark_ms"]],
                    [f"VAE decode of {decode['frames']} frames, channels-last", decode["channels_last_heuristic_ms"],
                     decode["channels_last_benchmark_ms"]]])]
    convs = data["unet_convs"]
    gained = sum(row["calls"] * (row["heuristic_ms"] - row["benchmark_ms"]) for row in convs)
    total = sum(row["calls"] * row["heuristic_ms"] for row in convs)
    parts.append(f"The UNet's {len(convs)} distinct 2D convolution shapes alone: cuDNN's search saves "
                 f"{gained:.2f} of {total:.1f} ms per call.")
    parts.append(table(("layers before the first cross-attention", "one row ms", "two rows ms"),
                       [["conv_in, transformer_in, first resnet and temporal conv", prefix["batch1_ms"],
                         prefix["batch2_ms"]]]))
    if isinstance(data.get("fp8_linears"), list):
        parts.append("torchao FP8 linear layers (dynamic per-row scales), compiled, against compiled bf16:\n\n" + table(
            ("tokens x in -> out", "bf16 ms", "fp8 ms", "fp8 speed-up"),
            [[f"{row['tokens']} x {row['features_in']} -> {row['features_out']}", row["bf16_ms"], row["fp8_ms"],
              row["bf16_ms"] / row["fp8_ms"]] for row in data["fp8_linears"]]))
    return parts


def geglu_probe(data: dict) -> list[str]:
    """bench/diagnostics/geglu_probe.py: the fused GEGLU kernel against cuBLAS's projection + Inductor's
    activation, per feed-forward shape of one UNet call."""
    library_erf = "library_erf_ms" in data["shapes"][0]  # the same kernel with the CuTe DSL's erf, timed too
    rows = [[f"{row['tokens']} x {row['features_in']} -> 2 x {row['inner']}", row["calls"], row["compiled_ms"],
             row["compiled_tflops"], row["kernel_ms"], row["kernel_tflops"],
             *([row["library_erf_ms"]] if library_erf else []), row.get("projection_alone_ms"),
             row["compiled_relative_l2"], row["kernel_relative_l2"]] for row in data["shapes"]]
    total = data.get("per_unet_call", {})
    kernel = data.get("kernel", "a Triton kernel")
    with_library_erf = f", with the library erf {number(total['library_erf_ms'])} ms" if library_erf else ""
    return [f"Fused kernel: {kernel}.",
            table(("tokens x in -> out", "per call", "cuBLAS + Inductor ms", "TFLOP/s", "fused kernel ms", "TFLOP/s",
                   *(["fused, library erf ms"] if library_erf else []), "cuBLAS projection alone ms",
                   "rel. L2 vs fp32", "kernel rel. L2 vs fp32"), rows),
            f"Per UNet call: cuBLAS + Inductor {number(total.get('compiled_ms'))} ms, fused kernel "
            f"{number(total.get('kernel_ms'))} ms{with_library_erf}."]


def vae_decode_probe(data: dict) -> list[str]:
    """bench/diagnostics/vae_decode_probe.py: the VAE decoder eager against torch.compile, per chunk size."""
    rows = [[row["decoder"], row["chunk"], row["ms"], gigabytes(row["peak_bytes"]), row["first_call_s"],
             row.get("relative_l2_vs_eager"), row.get("max_abs_uint8_vs_eager")] for row in data["decodes"]]
    return [table(("decoder", "frames per call", "ms for all frames", "peak GB", "first call s", "rel. L2 vs eager",
                   "max uint8 vs eager"), rows)]


def pipeline_phases(data: dict) -> list[str]:
    """bench/diagnostics/pipeline_phases.py: a video's time per model, each call timed alone, and its decode."""
    alone = data.get("calls_timed_alone", {})
    rows = [[name, model["calls"], model["seconds"] * 1e3, model["seconds"] * 1e3 / model["calls"]]
            for name, model in alone.get("models", {}).items()]
    rows.append(["between the calls (scheduler, guidance, inputs)", "", alone.get("outside_models_s", 0) * 1e3, ""])
    plan, eager = data.get("decode_plan", {}), data.get("eager_decode_plan", {})
    decodes = [[row["chunk"] or "automatic", row["frames_per_call"], row["seconds"] * 1e3,
                gigabytes(row["peak_bytes"]), gigabytes(row["predicted_peak_bytes"])]
               for row in data.get("decodes", [])]
    return [f"{data['size']}, {data['steps']} steps, UNet `{data['variant']}`; the video as the benchmark times it: "
            f"{number(data.get('video_s'))} s; with each model call timed alone (synchronised around it): "
            f"{number(alone.get('whole_s'))} s",
            table(("model", "calls", "ms", "ms per call"), rows),
            f"Decode plan: {gigabytes(plan.get('per_frame_bytes'))} GB per frame, {plan.get('automatic_chunk')} "
            f"frames per call (measured on the eager decoder: {gigabytes(eager.get('per_frame_bytes'))} GB per "
            f"frame, {eager.get('automatic_chunk')} frames per call)",
            table(("chunk asked", "frames per call", "ms for all frames", "peak GB", "predicted peak GB"), decodes)]


def multi_gpu(data: dict) -> list[str]:
    return [table(("requests", "same seed, same video", "every GPU's copies served"),
                  [[data["requests"], data["same_seed_same_video"], data["every_gpu_served"]]]),
            table(("model", "requests"), sorted(data["requests_per_model"].items()))]


def perf_analyzer(data: dict) -> list[str]:
    rows = [[run["protocol"], run["concurrency"], run["csv"]["Inferences/Second"],
             *(run["csv"][f"{which} latency"] / 1e3 for which in ("Avg", "p50", "p99"))]
            for run in data["runs"] if "csv" in run]
    return ["perf_analyzer sweep:\n\n"
            + table(("protocol", "concurrency", "infer/s", "avg ms", "p50 ms", "p99 ms"), rows)]


def group_norm_probe(data: dict) -> list[str]:
    """bench/diagnostics/group_norm_probe.py: per level and Inductor setting, each Triton kernel's time."""
    rows = []
    for row in data["rows"]:
        triton = {name: us for name, us in row["kernels"].items() if name.startswith("triton")}
        rows.append([f"{row['channels']} x {row['size']}x{row['size']}", row["settings"], row["compile_s"],
                     row["triton_us"], row["total_us"], "; ".join(f"{name}: {us:.1f}" for name, us in triton.items())])
    return [table(("channels x level", "Inductor settings", "compile s", "Inductor kernels us", "all kernels us",
                   "each Inductor kernel, us"), rows)]


# First matching pattern wins.
RENDERERS: list[tuple[str, Callable[[dict], list[str]]]] = [
    ("end_to_end*.json", end_to_end),
    ("unet_calls*.json", unet_calls),
    ("startup*.json", startup),
    ("decode_and_encode*.json", decode_and_encode),
    ("gpu_serving*.json", gpu_serving),
    ("cache*.json", cache),
    ("step_overhead*.json", step_overhead),
    ("job_api_overhead*.json", job_api_overhead),
    ("multi_gpu_serving*.json", multi_gpu),
    ("perf_analyzer*.json", perf_analyzer),
    ("lossless_probe*.json", lossless_probe),
    ("geglu_probe*.json", geglu_probe),
    ("vae_decode_probe*.json", vae_decode_probe),
    ("pipeline_phases*.json", pipeline_phases),
    ("group_norm_probe*.json", group_norm_probe),
]


def result_files(results: Path = RESULTS) -> list[str]:
    """Every result file as ``card/name.json``. One outside a card folder is an error: a benchmark run with
    its default output folder would otherwise leave a file that no page shows."""
    stray = sorted(path.name for path in results.glob("*.json"))
    if stray:
        raise ValueError(f"{stray}: result files go in a folder per card, bench/results/<card>/<benchmark>.json")
    return sorted(str(path.relative_to(results)) for path in results.glob("*/*.json"))


def render_file(results: Path, name: str) -> str:
    path = results / name
    data = json.loads(path.read_text())
    renderer = next((render for pattern, render in RENDERERS if fnmatch.fnmatch(path.name, pattern)), None)
    if renderer is None:
        raise ValueError(f"{name}: no table for this result file; add a renderer to bench/results_table.py")
    parts = [f"`{name}`:", description(data), *renderer(data)]
    if path.with_suffix(".md").exists():  # perf_analyzer's own report beside its JSON
        report = str(Path(name).with_suffix(".md"))
        parts.insert(2, f"Report: [{report}]({report})")
    return "\n\n".join(parts)


def render(results: Path = RESULTS, template: Path = TEMPLATE) -> str:
    text = template.read_text()
    named = set(PLACEHOLDER.findall(text))
    present = set(result_files(results))
    if named - present:
        raise ValueError(f"the template names result files that are not there: {sorted(named - present)}")
    text = PLACEHOLDER.sub(lambda match: render_file(results, match.group(1)), text)
    others = sorted(present - named)
    if others:
        text = text.rstrip("\n") + "\n\n## Other result files\n\n" + "\n\n".join(
            render_file(results, name) for name in others) + "\n"
    return text


def pages() -> dict[Path, str]:
    """Every rendered page and its text."""
    from bench import speed_page

    return {README: render(), speed_page.PAGE: speed_page.render(),
            speed_page.README: speed_page.render_readme(speed_page.README.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="exit 1 where a page differs from the results")
    args = parser.parse_args(argv)
    stale = 0
    for path, text in pages().items():
        if args.check:
            if path.read_text() != text:
                print(f"{path} is stale: run make results", file=sys.stderr)
                stale = 1
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
