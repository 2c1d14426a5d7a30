"""bench/results/README.md, docs/speed.md and README.md's speed sentence are what bench.results_table
renders from bench/results/<card>/ (so none can go stale), and every result file gets its table."""

import json
import shutil

import pytest

from bench import results_table, speed_page


@pytest.mark.parametrize("page", list(results_table.pages()), ids=lambda path: path.name)
def test_committed_pages_are_the_rendered_ones(page):
    assert page.read_text() == results_table.pages()[page], "run: make results"


def test_every_result_file_has_a_table_with_its_device_and_date():
    readme = results_table.README.read_text()
    for name in results_table.result_files():
        assert f"`{name}`:\n\n| device | driver | torch | date | note |" in readme, name
        data = json.loads((results_table.RESULTS / name).read_text())
        assert data.get("date"), f"{name} names no date"


def test_results_are_one_folder_per_card_with_plain_names():
    for name in results_table.result_files():
        card, file = name.split("/")
        assert card in {"h100", "h200", "h200x2", "cpu"}, name
        assert not any(mark in file for mark in ("_h100", "_h200", "_cpu", "_rerun", "_first")), name


def test_a_new_result_file_is_appended_and_an_unknown_kind_is_an_error(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("# Results\n\n{{ card/end_to_end.json }}\n")
    end_to_end = json.loads((results_table.RESULTS / "h200/end_to_end.json").read_text())
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "end_to_end.json").write_text(json.dumps(end_to_end))
    shutil.copy(results_table.RESULTS / "cpu/cache.json", tmp_path / "card" / "cache.json")
    text = results_table.render(tmp_path, template)
    order = ["`card/end_to_end.json`:", "## Other result files", "`card/cache.json`:"]
    assert [text.index(mark) for mark in order] == sorted(text.index(mark) for mark in order)
    first = end_to_end["sizes"][0]["pipelines"][0]
    assert f"| {first['pipeline']} | {results_table.number(first['seconds'])} |" in text

    (tmp_path / "card" / "mystery.json").write_text("{}")
    with pytest.raises(ValueError, match="mystery.json: no table"):
        results_table.render(tmp_path, template)
    (tmp_path / "card" / "mystery.json").unlink()
    template.write_text("{{ card/gone.json }}")
    with pytest.raises(ValueError, match="gone.json"):
        results_table.render(tmp_path, template)


def test_a_result_outside_a_card_folder_is_an_error(tmp_path):
    (tmp_path / "cache_tiny_cpu.json").write_text("{}")
    with pytest.raises(ValueError, match="cache_tiny_cpu.json.*folder per card"):
        results_table.result_files(tmp_path)


def test_the_speed_page_shows_the_newest_figures_of_each_card():
    page = speed_page.PAGE.read_text()
    for card in speed_page.cards():
        data = json.loads((results_table.RESULTS / card / "end_to_end.json").read_text())
        for row in data["sizes"][0]["pipelines"]:
            assert f"| {speed_page.label(row['pipeline'])} | {row['seconds']:.2f} |" in page, (card, row["pipeline"])
    assert "random fp16 weights" in page


def test_the_ablation_renders_whatever_fast_rows_a_run_has(tmp_path, monkeypatch):
    """The rows of ``bench.unet_calls --ablate fast`` (variants like ``fast,-fused_residuals``, maybe a
    recipe) render like today's named variants; rows of other variants stay out."""
    (tmp_path / "gpu").mkdir()
    rows = [dict(variant="eager", ms=200.0, tflops=200.0),
            dict(variant="fast", ms=100.0, tflops=400.0, share_of_matrix_rate=0.55, relative_l2_vs_eager=2e-3),
            dict(variant="fast,-fused_residuals", ms=103.5, tflops=390.0, share_of_matrix_rate=0.53,
                 recipe={"fused_residuals": False}),
            dict(variant="compile", ms=130.0, tflops=300.0)]
    (tmp_path / "gpu" / "unet_calls.json").write_text(json.dumps(dict(
        gpu="Some GPU", date="2027-01-01", frames=16, height=512, width=512, flops=41.87e12,
        matrix_tflops_before=720.0, calls=rows)))
    monkeypatch.setattr(speed_page, "RESULTS", tmp_path)
    text = speed_page.ablation("gpu")
    assert "| `fast,-fused_residuals` | 103.5 | +3.5 | 390 | 53.0% | - |" in text
    assert "| `fast` | 100.0 |  | 400 | 55.0% | 2.00e-03 |" in text
    assert "`compile`" not in text and "| `eager`" not in text
    assert "Eager diffusers UNet in the same run: 200.0 ms" in text


def test_the_profile_shares_add_up_to_the_profiles_total():
    text = (results_table.RESULTS / "h100" / speed_page.PROFILE).read_text()
    kinds, total = speed_page.profile_shares(text)
    assert sum(kinds.values()) == pytest.approx(total)
    assert kinds["convolutions (cuDNN)"] > 0 and kinds["attention (cuDNN SDPA)"] > 0


def test_the_readme_sentence_names_the_newest_cards_figures():
    card = speed_page.newest_card()
    data = json.loads((results_table.RESULTS / card / "end_to_end.json").read_text())
    fast = next(row for row in data["sizes"][0]["pipelines"] if row["pipeline"] == "openspeedy-fast")
    sentence = speed_page.sentence()
    assert f"{fast['seconds']:.2f} s" in sentence and "random fp16 weights" in sentence
    assert data["gpu"].removeprefix("NVIDIA ") in sentence
    with pytest.raises(ValueError, match="markers"):
        speed_page.render_readme("no markers here")


def fp8_run() -> dict:
    """A whole-video run with the three peers, `fast` and the fp8 preset, as bench.end_to_end writes it."""
    base = dict(peak_bytes=20e9, load_and_warmup_s=150.0)
    pipelines = [
        dict(pipeline="diffusers", seconds=40.0, compile_s=3.0, **base),
        dict(pipeline="diffusers-compile", seconds=30.0, compile_s=160.0, **{"speedup_vs_diffusers": 4 / 3}, **base),
        dict(pipeline="diffusers-tuned", seconds=28.0, compile_s=600.0, speedup_vs_diffusers=40 / 28,
             **{"speedup_vs_diffusers-compile": 30 / 28}, **base),
        dict(pipeline="openspeedy-fast", seconds=25.0, compile_s=140.0, speedup_vs_diffusers=1.6,
             **{"speedup_vs_diffusers-compile": 1.2, "speedup_vs_diffusers-tuned": 1.12}, **base),
        dict(pipeline="openspeedy-fp8", seconds=20.0, compile_s=420.0, speedup_vs_diffusers=2.0,
             **{"speedup_vs_diffusers-compile": 1.5, "speedup_vs_diffusers-tuned": 1.4}, speedup_vs_fast=1.25,
             relative_l2_vs_fast=0.031, psnr_db_vs_fast=31.4, **base),
    ]
    return dict(gpu="Some GPU", date="2027-01-01", steps=50, torch="2.11.0+cu130", variants={"fast": {}, "fp8": {}},
                peers=["diffusers", "diffusers-compile", "diffusers-tuned"], compile_cache_dir="/tmp/cache",
                sizes=[dict(frames=16, height=704, width=1280, pipelines=pipelines)])


def test_the_fp8_preset_is_shown_against_each_peer_and_fast(tmp_path, monkeypatch):
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "end_to_end_fp8.json").write_text(json.dumps(fp8_run()))
    monkeypatch.setattr(speed_page, "RESULTS", tmp_path)
    text = speed_page.fp8("gpu")
    assert ("| pipeline | seconds | x diffusers | x diffusers + compile | x diffusers tuned | x `fast` | "
            "video rel. L2 vs `fast` | PSNR dB vs `fast` | peak GB | compile s |") in text
    assert "| OpenSpeedy `fp8` | 20.00 | 2.000 | 1.500 | 1.400 | 1.250 | 0.031 | 31.4 | 20.00 | 420 |" in text
    assert "`fast` |" not in text.split("\n")[-1][:20]  # fast's own row is not an fp8 row
    assert "16 x 704x1280" in text and "end_to_end_fp8.json" in text
    assert speed_page.fp8("none") == "No run on this card measured the `fp8` preset (`bench/results/none/`)."
    assert "--peers diffusers,diffusers-compile,diffusers-tuned --compile-cache-dir /tmp/cache" in (
        speed_page.commands("gpu"))
    assert '--variants "fast;fp8"' in speed_page.commands("gpu")


def test_the_headline_has_the_tuned_peer_and_compile_time_where_a_run_measured_them(tmp_path, monkeypatch):
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "end_to_end.json").write_text(json.dumps(fp8_run()))
    monkeypatch.setattr(speed_page, "RESULTS", tmp_path)
    text = speed_page.headline("gpu")
    assert "| pipeline | seconds | x diffusers | x diffusers + compile | x diffusers tuned |" in text
    assert "| diffusers tuned (speed guide) | 28.00 | 1.429 | 1.071 | 1.000 | - | 20.00 | 600 |" in text
    assert "| diffusers | 40.00 | 1.000 | - | - | - | 20.00 | 3 |" in text
    readme = results_table.end_to_end(fp8_run())[1]
    assert "| vs diffusers-tuned | video rel. L2 vs diffusers | rel. L2 vs exact | vs fast |" in readme
    assert ("| openspeedy-fp8 | 20 | 2.000 | 1.500 | 1.400 | - | - | 1.250 | 0.031 | 31.4 | 20.00 | 420 | 150 |"
            in readme)


def test_committed_results_without_compile_times_render_them_as_not_measured():
    """Runs from before the compile time was measured: the column is there, its cells "-"."""
    page = speed_page.PAGE.read_text()
    data = json.loads((results_table.RESULTS / "h100" / "end_to_end.json").read_text())
    assert not any("compile_s" in row for size in data["sizes"] for row in size["pipelines"])
    assert ("| pipeline | seconds | x diffusers | x diffusers + compile | rel. L2 vs diffusers | peak GB | compile s |"
            in page)
    fast = next(row for row in data["sizes"][0]["pipelines"] if row["pipeline"] == "openspeedy-fast")
    assert f"| OpenSpeedy `fast` | {fast['seconds']:.2f} |" in page
    assert "No run on any card measured the `fp8` preset" in page
    assert "quality on trained weights was not measured" in page
