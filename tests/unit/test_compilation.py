"""How the components call torch.compile (openspeedy/compilation.py): Inductor settings parsed and checked,
a mode joined to them as its settings, the on-disk caches where the config says."""

import os

import pytest
import torch

from openspeedy.components import load_component


def test_inductor_options_parse_to_settings_and_join_the_mode(monkeypatch):
    from openspeedy.compilation import compiler, parse_inductor_options

    assert parse_inductor_options(" coordinate_descent_tuning=true, conv_1x1_as_mm=False,"
                                  "coordinate_descent_search_radius=2") == {
        "coordinate_descent_tuning": True, "conv_1x1_as_mm": False, "coordinate_descent_search_radius": 2}
    assert parse_inductor_options("") == {}
    for text, rule in (("no_such_setting=true", "Inductor has no setting 'no_such_setting'"),
                       ("freezing", "NAME=VALUE"), ("freezing=maybe", "true, false or an integer")):
        with pytest.raises(ValueError, match=rule):
            parse_inductor_options(text)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    compiler("default", {})(print)
    compiler("reduce-overhead", {"freezing": True})(print)  # torch.compile takes a mode or options, not both
    assert calls == [dict(mode=None, dynamic=False),
                     dict(options={"triton.cudagraphs": True, "freezing": True}, dynamic=False)]


def test_a_bad_inductor_option_fails_the_load(tiny_checkpoint):
    with pytest.raises(ValueError, match="unet: inductor_options"):
        load_component("unet", tiny_checkpoint, options={"compile_mode": "default", "inductor_options": "bogus=1"})


def test_compile_cache_dir_takes_effect_after_torch_chose_its_default(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")  # what torch sets on first use
    for name in ("TRITON_CACHE_DIR", "QUACK_CACHE_DIR", "QUACK_CACHE_AUTOTUNING"):
        monkeypatch.delenv(name, raising=False)
    load_component("unet", tiny_checkpoint, options={"compile_mode": "default", "compile_cache_dir": str(tmp_path)})
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert os.environ["QUACK_CACHE_DIR"] == str(tmp_path / "quack")  # the GEGLU kernel's builds and tuning
    assert os.environ["QUACK_CACHE_AUTOTUNING"] == "1"
