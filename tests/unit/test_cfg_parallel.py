"""CFG-parallel: the two guidance halves of each UNet call as two one-row calls, joined back in the batched
order. The latents are the batched call's to float rounding: on CPU a batch-1 and a batch-2 convolution may
sum in another order (measured on the tiny model: relative difference about 2e-6, largest 7e-6), so the
bound is 1e-5 relative and 5e-5 absolute, far below what any approximation or seed change moves
(test_approximations)."""

import json
import logging

import pytest
import torch

from openspeedy import contracts
from openspeedy.export.repository import TINY_SETTINGS, ExportOptions, model_configs
from openspeedy.model_parameters import cfg_parallel_gpus, flag
from openspeedy.pipeline import I2VGenXL
from tests.helpers import parse
from tests.unit.test_approximations import STEPS, interval, request, reuse

RELATIVE, ABSOLUTE = 1e-5, 5e-5


class HalvesRecorder:
    """The in-process components; records each UNet call's batch, and which calls came as one group."""

    def __init__(self, local_models):
        self.local_models = local_models
        self.unet: list[list[int]] = []  # one entry per UNet call site: the batches of the calls made at once

    def __call__(self, contract, inputs):
        if contract is contracts.UNET:
            self.unet.append([inputs["SAMPLE"].shape[0]])
        return self.local_models(contract, inputs)

    def call_many(self, contract, inputs):
        self.unet.append([one["SAMPLE"].shape[0] for one in inputs])
        return self.local_models.call_many(contract, inputs)


@pytest.fixture
def parallel(tiny_checkpoint, local_models):
    models = HalvesRecorder(local_models)
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    return models, I2VGenXL(models, scheduler, scaling, cfg_parallel=True)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).norm() / b.norm()) < RELATIVE and float((a - b).abs().max()) < ABSOLUTE


@pytest.mark.parametrize("modes, calls", [
    ({}, [[1, 1]] * STEPS),
    (reuse(3), [[1, 1]] * STEPS),  # deep features split for the shallow steps, joined after the full ones
    (interval(0.0, 0.5), [[1, 1]] * 5 + [[1]] * 4),  # outside the interval: the conditional row alone, as ever
], ids=["plain", "feature-reuse", "guidance-interval"])
def test_halves_give_the_batched_latents(parallel, local_pipeline, modes, calls):
    models, pipeline = parallel
    latents = pipeline.denoise(request(**modes))
    assert models.unet == calls
    batched = local_pipeline.denoise(request(**modes))
    assert close(latents, batched)


def test_a_caller_without_call_many_gets_the_halves_one_after_the_other(tiny_checkpoint, local_models,
                                                                        local_pipeline):
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())["scaling_factor"]
    calls = []

    def plain(contract, inputs):
        if contract is contracts.UNET:
            calls.append(inputs["SAMPLE"].shape[0])
        return local_models(contract, inputs)

    latents = I2VGenXL(plain, scheduler, scaling, cfg_parallel=True).denoise(request())
    assert calls == [1, 1] * STEPS
    assert close(latents, local_pipeline.denoise(request()))


def configs(tmp_path, **options):
    texts = model_configs(ExportOptions(settings=TINY_SETTINGS, **options), 0.18215)
    parsed = {}
    for name, text in texts.items():
        (tmp_path / f"{name}.pbtxt").write_text(text)
        parsed[name] = parse(tmp_path / f"{name}.pbtxt")
    return parsed


def parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def groups(config):
    return [(group.count, list(group.gpus)) for group in config.instance_group]


def test_cpu_export_gives_the_unet_two_instances_and_the_entry_models_the_switch(tmp_path):
    parsed = configs(tmp_path, cfg_parallel=True)
    assert groups(parsed["unet"]) == [(2, [])]
    assert groups(parsed["vae_decoder"]) == [(1, [])]  # only the UNet serves halves
    for contract in contracts.ENTRY_MODELS:
        assert flag(parameters(parsed[contract.name]), "cfg_parallel")
    off = configs(tmp_path, cfg_parallel=False)
    assert groups(off["unet"]) == [(1, [])] and "cfg_parallel" not in parameters(off["i2vgen_xl"])


def test_gpu_export_puts_a_unet_instance_on_each_gpu(tmp_path):
    parsed = configs(tmp_path, device="gpu", gpus=(0, 1), cfg_parallel=True)
    assert groups(parsed["unet"]) == [(1, [0, 1])]
    assert parameters(parsed["i2vgen_xl"]).items() >= {"cfg_parallel": "true", "cfg_parallel_gpus": "0,1"}.items()


def test_gpu_export_with_per_gpu_copies_names_both_gpus(tmp_path):
    parsed = configs(tmp_path, device="gpu", gpus=(0, 1), cfg_parallel=True, per_gpu_components=True)
    assert groups(parsed["unet_gpu0"]) == [(1, [0])] and groups(parsed["unet_gpu1"]) == [(1, [1])]
    assert parameters(parsed["i2vgen_xl_stream"])["cfg_parallel_gpus"] == "0,1"


def test_one_gpu_falls_back_to_the_batched_call_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        parsed = configs(tmp_path, device="gpu", gpus=(0,), cfg_parallel=True)
    assert "cfg_parallel" not in parameters(parsed["i2vgen_xl"])
    assert "batched" in caplog.text


def test_gpu_export_without_named_gpus_is_refused():
    with pytest.raises(ValueError, match="cfg_parallel.*--gpus 0,1"):
        ExportOptions(device="gpu", cfg_parallel=True)


@pytest.mark.parametrize("listed, own, halves", [
    ("0,1", 0, (0, 1)),
    ("0,1", 1, (1, 0)),  # each orchestrator keeps its unconditional half on its own GPU
    ("0,1,2", 2, (2, 0)),
    ("0", 0, None),  # one GPU: the batched call
    ("0,1", 3, None),  # an orchestrator on a GPU not listed
    ("", 0, None),
])
def test_each_orchestrator_sends_one_half_to_its_own_gpu(listed, own, halves):
    assert cfg_parallel_gpus({"cfg_parallel_gpus": listed}, own) == halves
