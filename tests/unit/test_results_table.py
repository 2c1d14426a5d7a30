"""bench/results/README.md is what bench.results_table renders from the JSON files beside it (so it
cannot go stale), and every result file gets its table."""

import json

import pytest

from bench import results_table


def test_committed_readme_is_the_rendered_one():
    assert results_table.README.read_text() == results_table.render(), "run: make results"


def test_every_result_file_has_a_table_with_its_device_and_date():
    readme = results_table.README.read_text()
    for path in results_table.RESULTS.glob("*.json"):
        assert f"`{path.name}`:\n\n| device | driver | torch | date | note |" in readme, path.name


def test_a_new_result_file_is_appended_and_an_unknown_kind_is_an_error(tmp_path):
    template = tmp_path / "template.md"
    template.write_text("# Results\n\n{{ end_to_end_x.json }}\n")
    end_to_end = json.loads((results_table.RESULTS / "end_to_end_h200.json").read_text())
    (tmp_path / "end_to_end_x.json").write_text(json.dumps(end_to_end))
    (tmp_path / "cache_y.json").write_text((results_table.RESULTS / "cache_tiny_cpu.json").read_text())
    text = results_table.render(tmp_path, template)
    assert text.index("`end_to_end_x.json`:") < text.index("## Other result files") < text.index("`cache_y.json`:")
    first = end_to_end["sizes"][0]["pipelines"][0]
    assert f"| {first['pipeline']} | {results_table.number(first['seconds'])} |" in text

    (tmp_path / "mystery.json").write_text("{}")
    with pytest.raises(ValueError, match="mystery.json: no table"):
        results_table.render(tmp_path, template)
    template.write_text("{{ gone.json }}")
    with pytest.raises(ValueError, match="gone.json"):
        results_table.render(tmp_path, template)
