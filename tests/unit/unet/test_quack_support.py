"""Whether QuACK's kernels can run (openspeedy/unet/quack_support.py): the reason where they cannot, any error
while a kernel builds taken as one, and the rows its loads need."""

import torch

from openspeedy.unet.fused_geglu import kernel_unavailable
from openspeedy.unet.quack_support import dense_rows


def test_kernel_unavailable_names_the_reason():
    assert kernel_unavailable(torch.device("cpu"), torch.float16) == "it runs on CUDA GPUs only"


def test_dense_rows_copies_only_rows_the_kernels_cannot_load():
    matrix = torch.randn(6, 8)
    assert dense_rows(matrix) is matrix
    for strided in (matrix[:, :4], matrix.T):  # rows apart, elements apart
        rows = dense_rows(strided)
        assert rows.is_contiguous() and torch.equal(rows, strided)


def test_a_kernel_that_fails_to_build_turns_the_option_off(monkeypatch):
    """Any error while QuACK builds the epilogue at import (a TypeError was seen) is a reason, not a crash."""
    import builtins
    import sys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delitem(sys.modules, "openspeedy.unet.fused_geglu_kernel", raising=False)
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "openspeedy.unet.fused_geglu_kernel":
            raise TypeError("epilogue fn depends on <ContextVar name='_LOC_TRANSFORMS'>")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    reason = kernel_unavailable(torch.device("cuda"), torch.float16)
    assert reason.startswith("QuACK is not usable here (TypeError: epilogue fn depends on")
