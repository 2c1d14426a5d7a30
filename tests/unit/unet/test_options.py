"""The UNet's options (openspeedy/unet/options.py): read from and written to config parameters, every key
checked, prerequisites held, presets, ablations and the command-line spelling."""

import dataclasses

import pytest

from openspeedy.unet.options import (
    COMPILE,
    EAGER,
    FAST,
    FP8,
    PRESETS,
    UNetOptions,
    markdown_table,
    parse,
)


def test_fast_is_every_lossless_technique_that_was_served():
    assert FAST.as_parameters() == {
        "fuse_qkv": "true", "temporal_attention": "true", "fused_geglu": "true", "temporal_conv2d": "true",
        "channels_last": "true", "channels_last_joins": "true", "channels_last_temporal_convs": "true",
        "share_cfg_rows": "true", "fused_residuals": "true", "compile_mode": "default", "cuda_graphs": "true"}
    assert COMPILE.as_parameters() == {"fuse_qkv": "true", "compile_mode": "default"}  # diffusers' two lines
    assert EAGER.as_parameters() == {}
    assert FP8.techniques_on == (  # fast's, but FP8 linears in place of the fused GEGLU
        "fuse_qkv", "temporal_attention", "temporal_conv2d", "channels_last", "channels_last_joins",
        "channels_last_temporal_convs", "fp8", "share_cfg_rows", "fused_residuals", "compile_mode", "cuda_graphs")


@pytest.mark.parametrize("options", [*PRESETS.values(), FAST.without("fused_residuals"),
                                     UNetOptions(max_cuda_graphs=2, feature_reuse=True)])
def test_parameters_read_back_as_the_same_options(options):
    assert UNetOptions.from_parameters(options.as_parameters()) == options
    assert parse(options.spelling()) == options


def test_other_parameters_of_the_unet_config_pass():
    parameters = {"dtype": "float16", "warmup_shapes": "16x512x512", "compile_cache_dir": "/cache",
                  "FORCE_CPU_ONLY_INPUT_TENSORS": "no", "runtime": "torch", "fuse_qkv": "yes"}
    assert UNetOptions.from_parameters(parameters) == UNetOptions(fuse_qkv=True)


@pytest.mark.parametrize("parameters, error", [
    ({"fused_residual": "true"}, "unknown parameter 'fused_residual'; the options are fuse_qkv, "),
    ({"temporal_attention_kernel": "true"}, "unknown parameter 'temporal_attention_kernel'"),
    ({"fuse_qkv": "maybe"}, "fuse_qkv takes true or false, got 'maybe'"),
    ({"max_cuda_graphs": "four"}, "max_cuda_graphs takes an integer, got 'four'"),
    ({"max_cuda_graphs": "0"}, "max_cuda_graphs must be 1 or more"),
    ({"compile_mode": "fast"}, "compile_mode must be one of"),
    ({"channels_last_temporal_convs": "true"}, "channels_last_temporal_convs needs temporal_conv2d"),
    ({"fused_residuals": "true"}, "fused_residuals needs compile_mode"),
    ({"fp8": "true", "fused_geglu": "true"}, "fp8 excludes fused_geglu"),
    ({"inductor_options": "freezing=true"}, "inductor_options needs compile_mode"),
    ({"compile_mode": "default", "inductor_options": "bogus=1"}, "Inductor has no setting 'bogus'"),
    ({"compile_mode": "reduce-overhead", "cuda_graphs": "true"}, "cuda_graphs with compile_mode reduce-overhead"),
])
def test_bad_parameters_are_errors_naming_them(parameters, error):
    with pytest.raises(ValueError, match=error):
        UNetOptions.from_parameters(parameters)


def test_fields_are_typed():
    with pytest.raises(TypeError, match="fuse_qkv takes a bool"):
        UNetOptions(fuse_qkv="true")


def test_without_turns_off_what_needs_the_technique_too():
    assert FAST.without("fused_residuals") == dataclasses.replace(FAST, fused_residuals=False)
    without_compile = FAST.without("compile_mode")
    assert without_compile.compile_mode == "" and not without_compile.fused_residuals
    assert without_compile.cuda_graphs  # graphs need no compiler
    assert not FAST.without("temporal_conv2d").channels_last_temporal_convs
    with pytest.raises(ValueError, match="unknown option 'fused_residual'"):
        FAST.without("fused_residual")


@pytest.mark.parametrize("spelling, expected", [
    ("fast", FAST),
    ("eager", EAGER),
    ("compile", COMPILE),
    ("fast,-fused_residuals", FAST.without("fused_residuals")),
    (" fast , -cuda_graphs , +compile_mode=reduce-overhead ",
     dataclasses.replace(FAST, cuda_graphs=False, compile_mode="reduce-overhead")),
    ("eager,+fuse_qkv,+compile_mode=default", COMPILE),
    ("fast,+inductor_options=coordinate_descent_tuning=true,conv_1x1_as_mm=true",
     dataclasses.replace(FAST, inductor_options="coordinate_descent_tuning=true,conv_1x1_as_mm=true")),
    ("fast,+max_cuda_graphs=2", dataclasses.replace(FAST, max_cuda_graphs=2)),
])
def test_spellings(spelling, expected):
    assert parse(spelling) == expected


@pytest.mark.parametrize("spelling, error", [
    ("quick", "start with a preset, one of eager, compile, fast, fp8; got 'quick'"),
    ("fast,-fused_residual", "unknown option 'fused_residual'"),
    ("fast,+compile_mode", r"\+compile_mode needs a value"),
    ("fast,-compile_mode=default", "-compile_mode takes no value"),
    ("fast,fused_residuals", "'fused_residuals' is not \\+NAME, \\+NAME=VALUE or -NAME"),
    ("eager,+channels_last_temporal_convs", "channels_last_temporal_convs needs temporal_conv2d"),
])
def test_bad_spellings_are_errors_naming_them(spelling, error):
    with pytest.raises(ValueError, match=error):
        parse(spelling)


def test_markdown_table_has_a_row_an_option_in_the_order_applied():
    rows = markdown_table().splitlines()
    assert rows[0] == "| option | module | what it does |"
    names = [row.split("`")[1] for row in rows[2:]]
    assert names == [item.name for item in dataclasses.fields(UNetOptions)]
    assert "| `fused_residuals` | `openspeedy/unet/fused_residuals.py` |" in markdown_table()
    assert "Needs `compile_mode`." in rows[2 + names.index("fused_residuals")]
    assert "Not with `fused_geglu`." in rows[2 + names.index("fp8")]
