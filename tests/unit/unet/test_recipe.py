"""The UNet's recipe (openspeedy/unet/recipe.py): every preset, and `fast` without each of its techniques,
loads the tiny UNet on a CPU, predicts what eager predicts, and reports a line a technique: applied, with
what it did, or skipped, with why. An option export or the loader does not know fails them, naming it.

torch.compile is replaced by a recorder here (each compile on a 2-core CPU takes minutes): compile_mode's
step is checked for what it compiles and with which settings; the compiled arithmetic is checked in
test_fused_residuals.py and, slow, in test_layout.py. Tolerance: 1e-5, the float32 rounding of computing a
product in another order (fused QKV, 2D temporal convolutions, the CFG pair's rows once); techniques that
change nothing on a CPU (the attention kernel falls back to the SDPA it replaces; the QuACK kernels and CUDA
graphs are skipped) give `fast`'s prediction bit for bit."""

import dataclasses
import logging
import re
from pathlib import Path

import pytest
import torch

from openspeedy import contracts
from openspeedy.components import load_component
from openspeedy.example_inputs import as_cfg_pair, example_inputs, unet_sizes
from openspeedy.export.__main__ import main as export_main
from openspeedy.export.options import ExportOptions
from openspeedy.export.repository import TINY_SETTINGS, model_configs
from openspeedy.unet import recipe
from openspeedy.unet.options import COMPILE, EAGER, FAST, PRESETS, UNetOptions
from tests.helpers import parse as parse_config

# What each technique reports when it runs on a CPU.
ON_CPU = {
    "fuse_qkv": r"applied \([1-9]\d* attentions fused\)",
    "temporal_attention": r"applied \([1-9]\d* temporal attentions given the kernel's processor\)",
    "fused_geglu": r"skipped: it runs on CUDA GPUs only; diffusers' GEGLU runs",
    "temporal_conv2d": r"applied \([1-9]\d* temporal Conv3d as 2D convolutions\)",
    "channels_last": r"applied \([1-9]\d* convolution weights converted\)",
    "channels_last_joins": r"applied \([1-9]\d* up block resnets wrapped\)",
    "channels_last_temporal_convs": r"applied \([1-9]\d* temporal convolutions wrapped\)",
    "fp8": r"skipped: FP8 needs compute capability 8\.9\+ \(a CUDA GPU: Ada, Hopper or newer\), this UNet runs on cpu",
    "share_cfg_rows": r"applied \(3 inputs sent with one row where a pair shares them\)",
    "inductor_options": r"applied \(\d+ Inductor settings: .*\)",
    "fused_residuals": r"skipped: it runs on CUDA GPUs only; the additions stay Inductor's",
    "compile_mode": r"applied \(3 forward paths, mode default\)",
    "cuda_graphs": r"skipped: CUDA graphs need a CUDA device, this UNet runs on cpu",
}
NEUTRAL_ON_CPU = {"temporal_attention", "fused_geglu", "fused_residuals", "compile_mode", "cuda_graphs"}
VARIANTS = dict(PRESETS) | {
    f"fast,-{name}": FAST.without(name) for name in FAST.techniques_on}


class Recorded(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def small_pair(diffusers_unet):
    """A CFG pair as the pipeline sends it, small: 14 UNets predict it on a 2-core CPU."""
    return as_cfg_pair(example_inputs(contracts.UNET, unet_sizes(diffusers_unet.config, 2, 4, 4),
                                      generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint, small_pair):
    """name -> (prediction on a CFG pair, recipe report, lines logged, compiles asked for) of each variant."""
    compiles = []

    def recording_compiler(mode, settings):
        def compile(fn):
            compiles.append((mode, dict(settings)))
            return fn

        return compile

    handler, logger = Recorded(), logging.getLogger("openspeedy.unet")
    logger.addHandler(handler)
    # setLevel, not an assignment: it clears the level check's cache, which an earlier test in the same
    # process may have filled while the effective level was WARNING.
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.INFO)
    logger.disabled = False
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe, "compiler", recording_compiler)
        try:
            for name, options in VARIANTS.items():
                handler.lines, compiles[:] = [], []
                unet = load_component("unet", tiny_checkpoint, options=options.as_parameters())
                prediction = unet.infer(small_pair)["NOISE_PRED"]
                results[name] = prediction, unet.recipe_report, handler.lines, list(compiles)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.disabled = disabled
    return results


def test_the_steps_are_the_techniques_in_field_order():
    techniques = [item.name for item in dataclasses.fields(UNetOptions) if item.metadata["technique"]]
    assert [name for name, _ in recipe.STEPS] == techniques


def test_each_technique_is_named_as_its_module():
    """Where a module of openspeedy/unet/ implements one technique, it has the technique's name."""
    package = Path(recipe.__file__).parent
    for item in dataclasses.fields(UNetOptions):
        module = item.metadata["module"]
        if module.startswith("openspeedy/"):
            assert (package.parents[1] / module).is_file(), module
        if module.startswith("openspeedy/unet/") and module != "openspeedy/unet/layout.py":
            assert Path(module).stem == item.name


@pytest.mark.parametrize("name", VARIANTS)
def test_every_preset_and_ablation_of_fast_predicts_what_eager_predicts(loaded, name):
    prediction, report, logged, compiles = loaded[name]
    torch.testing.assert_close(prediction, loaded["eager"][0], rtol=1e-5, atol=1e-5)
    options = VARIANTS[name]
    assert [line.split(":")[0] for line in report] == [step for step, _ in recipe.STEPS]
    for line in report:
        technique, _, outcome = line.partition(": ")
        expected = ON_CPU[technique] if getattr(options, technique) else "skipped: off in these options"
        assert re.fullmatch(expected, outcome), line
    assert logged == [f"unet: {line}" for line in report]  # one line a technique, at load
    if options.compile_mode:
        assert [mode for mode, _ in compiles] == ["default"] * 3  # the plain path (the model), full, shallow
        assert not any(settings for _, settings in compiles)  # fused_residuals installs no pass on a CPU
    else:
        assert compiles == []


@pytest.mark.parametrize("technique", sorted(NEUTRAL_ON_CPU))
def test_techniques_that_change_nothing_on_a_cpu_give_fasts_prediction_bit_for_bit(loaded, technique):
    assert torch.equal(loaded[f"fast,-{technique}"][0], loaded["fast"][0])


def test_fp8_skipped_on_a_cpu_gives_fasts_prediction_bit_for_bit(loaded):
    """The lossy preset where it cannot run: its other techniques are fast's (the fused GEGLU it leaves out
    is skipped on a CPU too), so nothing else changes."""
    assert torch.equal(loaded["fp8"][0], loaded["fast"][0])
    assert "fp8: skipped: FP8 needs compute capability 8.9+" in "\n".join(loaded["fp8"][1])


def test_export_writes_the_options_the_loader_reads(tmp_path):
    configs = model_configs(ExportOptions(settings=TINY_SETTINGS, unet_options=FAST), 0.18215)
    (path := tmp_path / "config.pbtxt").write_text(configs["unet"])
    parameters = {key: value.string_value for key, value in parse_config(path).parameters.items()}
    assert UNetOptions.from_parameters(parameters) == FAST
    assert "fused_residuals" not in model_configs(ExportOptions(settings=TINY_SETTINGS), 0.18215)["unet"]


def test_an_unknown_option_fails_export_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="--unet-options: unet: unknown option 'fused_residual'"):
        export_main(["--tiny", "--output", str(tmp_path / "repository"), "--unet-options", "fast,-fused_residual"])
    assert not (tmp_path / "repository").exists() and not list(tmp_path.iterdir())  # before any work


def test_export_defaults_to_fast_on_gpus_and_eager_on_cpus():
    import argparse

    from openspeedy.export.__main__ import add_arguments, unet_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for device, expected in (("gpu", FAST), ("cpu", EAGER)):
        assert unet_options(parser.parse_args(["--tiny", "--output", "x", "--device", device])) == expected
    args = parser.parse_args(["--tiny", "--output", "x", "--unet-options", "compile", "--warmup-feature-reuse"])
    assert unet_options(args) == dataclasses.replace(COMPILE, feature_reuse=True)
