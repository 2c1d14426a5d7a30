"""Importing the orchestrator's loop loads no network: the Triton entry model that runs it holds none, and
each network module it pulled in (diffusers' models, OpenSpeedy's UNet kernels and compiler passes) cost
the entry model's start time and memory for nothing."""

import subprocess
import sys

import pytest
import torch

from openspeedy.pipeline import sample_posterior

LOADED = """
import sys
import {module}
print("\\n".join(sorted(sys.modules)))
"""
NETWORK_CODE = ("diffusers.models", "openspeedy.unet", "openspeedy.components", "openspeedy.local_models",
                "torch._inductor.fx_passes", "torch._inductor.pattern_matcher", "torch._inductor.compile_fx",
                "transformers")


def loaded_by(module: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", LOADED.format(module=module)], capture_output=True, text=True,
                            timeout=300, check=True)
    return result.stdout.split()


def network_code(modules: list[str]) -> list[str]:
    return [name for name in modules if any(name == prefix or name.startswith(prefix + ".") for prefix in NETWORK_CODE)]


def test_importing_the_pipeline_loads_no_network_code():
    modules = loaded_by("openspeedy.pipeline")
    assert "diffusers.schedulers.scheduling_ddim" in modules  # the scheduler the loop steps with
    assert network_code(modules) == []


def test_the_check_sees_network_code_where_it_is_loaded():
    assert "openspeedy.components" in network_code(loaded_by("openspeedy.local_models"))


def test_the_posterior_draw_is_diffusers_own_bit_for_bit():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = torch.randn(1, 8, 6, 10) * 3  # log variances beyond the clamp's bounds too
    ours = sample_posterior(posterior, torch.Generator("cpu").manual_seed(5))
    theirs = DiagonalGaussianDistribution(posterior).sample(generator=torch.Generator("cpu").manual_seed(5))
    assert torch.equal(ours, theirs)
    with pytest.raises(AssertionError):  # a different draw differs: the comparison can fail
        assert torch.equal(ours, sample_posterior(posterior, torch.Generator("cpu").manual_seed(6)))
