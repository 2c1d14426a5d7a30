"""The encoders' speed paths: the CLIP encoders' device work replayed from CUDA graphs
(openspeedy/cuda_graphs.py), on by default on CUDA, off with ``cuda_graphs=false`` and on a CPU, and the
same embeddings either way; the VAE encoder's network compiled (``compile_mode``), the same posterior."""

import numpy as np
import pytest
import torch

from openspeedy.components import load_component
from openspeedy.cuda_graphs import GraphedCallable

ENCODERS = ("text_encoder", "image_encoder")


def encoder_inputs(name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if name == "text_encoder":
        words = ["a lighthouse by the sea", "a red fox in the snow", "rain on a window"]
        return {"PROMPT": np.array([words[seed % len(words)].encode()], dtype=object)}
    return {"IMAGE": torch.from_numpy(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))}


@pytest.mark.parametrize("name", ENCODERS)
def test_encoders_run_eager_on_a_cpu(tiny_checkpoint, name):
    encoder = load_component(name, tiny_checkpoint, options={"cuda_graphs": "true"})
    assert not isinstance(encoder.embed, GraphedCallable)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ENCODERS)
def test_graphed_encoders_give_the_eager_embeddings(tiny_checkpoint, name):
    graphed = load_component(name, tiny_checkpoint, "cuda")
    eager = load_component(name, tiny_checkpoint, "cuda", options={"cuda_graphs": "false"})
    assert isinstance(graphed.embed, GraphedCallable)
    assert not isinstance(eager.embed, GraphedCallable)
    kept = []
    for seed in range(3):  # the first call captures, the others replay with new inputs
        inputs = encoder_inputs(name, seed)
        (output,) = graphed.infer(inputs).values()
        (expected,) = eager.infer(inputs).values()
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)
        kept.append((output, expected))
    for output, expected in kept:  # outputs are clones: later replays left them be
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)
    assert len(graphed.embed.graphs) == 1


def test_compiled_vae_encoder_gives_the_eager_posterior(tiny_checkpoint):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # count this encoder's compiles alone
    counters.clear()
    compiled = load_component("vae_encoder", tiny_checkpoint, options={"compile_mode": "default",
                                                                      "warmup_shapes": "4x64x96"})
    assert counters["stats"]["unique_graphs"] == 1  # the warm-up shape compiled at load, not at a request
    eager = load_component("vae_encoder", tiny_checkpoint)
    for seed in range(2):
        image = {"IMAGE": torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (1, 64, 96, 3), np.uint8))}
        torch.testing.assert_close(compiled.infer(image)["LATENT_PARAMETERS"],
                                   eager.infer(image)["LATENT_PARAMETERS"], rtol=1e-4, atol=1e-4)
