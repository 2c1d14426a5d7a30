"""A forward replayed from one CUDA graph per input shape (openspeedy/cuda_graphs.py): the function's results,
outputs a later replay leaves alone, a bounded number of graphs; on a CPU the UNet's option is skipped."""

import pytest
import torch

from openspeedy.components import load_component
from openspeedy.cuda_graphs import GraphedCallable


def test_cuda_graphs_option_is_skipped_on_a_cpu(tiny_checkpoint):
    unet = load_component("unet", tiny_checkpoint, options={"cuda_graphs": "true"})
    assert not any(isinstance(fn, GraphedCallable) for fn in unet.paths.values())
    assert "cuda_graphs: skipped: CUDA graphs need a CUDA device, this UNet runs on cpu" in unet.recipe_report


@pytest.mark.gpu
def test_graphed_callable_replays_the_function():
    weight = torch.randn(64, 64, device="cuda")

    def fn(x, y):
        return (torch.relu(x @ weight) + y,)

    graphed = GraphedCallable(fn)
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 64, device="cuda")
    graphed.capture(x, y)
    for _ in range(3):
        x, y = torch.randn_like(x), torch.randn_like(y)
        (out,) = graphed(x, y)
        torch.testing.assert_close(out, fn(x, y)[0])
    (first,) = graphed(x, y)
    graphed(torch.zeros_like(x), y)
    torch.testing.assert_close(first, fn(x, y)[0])  # outputs are clones: a later replay leaves them be
    (other,) = graphed(torch.randn(8, 64, device="cuda"), torch.randn(8, 64, device="cuda"))  # never captured
    assert other.shape == (8, 64) and len(graphed.graphs) == 1


@pytest.mark.gpu
def test_graphs_are_bounded_in_number():
    graphed = GraphedCallable(lambda x: (x * 2,), max_graphs=2)
    for rows in (1, 2, 3, 4):
        x = torch.randn(rows, 8, device="cuda")
        graphed.capture(x)
        torch.testing.assert_close(graphed(x)[0], x * 2)
    assert len(graphed.graphs) == 2
