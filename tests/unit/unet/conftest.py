"""Fixtures of the UNet's technique tests: diffusers' tiny UNet and a call's inputs (rows that differ, and a
CFG pair as the pipeline sends it)."""

import pytest
import torch
from diffusers import I2VGenXLUNet

from openspeedy import contracts
from openspeedy.example_inputs import as_cfg_pair, example_inputs, unet_sizes


@pytest.fixture(scope="module")
def diffusers_unet(tiny_checkpoint):
    return I2VGenXLUNet.from_pretrained(tiny_checkpoint / "unet").eval()


@pytest.fixture(scope="module")
def inputs(diffusers_unet):
    return example_inputs(contracts.UNET, unet_sizes(diffusers_unet.config, 5, 72 // 8, 88 // 8, 2),
                          generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cfg_inputs(inputs):
    """A CFG call as the pipeline makes it: both rows share the sample, image latents, timestep and fps."""
    return as_cfg_pair(inputs)


@pytest.fixture(autouse=True)
def openspeedy_loggers_enabled():
    """The runtime's log lines reach caplog even after a library in the same test process configured
    logging with ``disable_existing_loggers`` (logging.config.dictConfig's default), which disables every
    logger that existed then: in a whole-suite run the recipe's lines were dropped that way."""
    import logging

    for name in ("openspeedy", "openspeedy.unet", "openspeedy.compile"):
        logging.getLogger(name).disabled = False
