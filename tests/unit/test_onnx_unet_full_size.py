"""The full-size UNet (published architecture, random weights) exports: size, signature and numbers of its graph.

Measured on the 2-core CI machine: about 2 minutes and 7.6 GB peak memory (the export runs in a
child process, so its memory is its own), 11 GB of temporary disk that the test removes. Marked slow
(`-m "not slow"` leaves it out, as `make test-unit` does); OPENSPEEDY_SKIP_FULL_SIZE_EXPORT=1 skips it
on a smaller machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import onnx
import pytest

from openspeedy import contracts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OPENSPEEDY_SKIP_FULL_SIZE_EXPORT") == "1",
                       reason="OPENSPEEDY_SKIP_FULL_SIZE_EXPORT=1"),
]

PUBLISHED_PARAMETERS = 1_420_469_224  # the published UNet's 1,420.5 M parameters (docs/models.md)

# Builds the UNet, counts its distinct weight tensors (the exporter stores identical initializers
# once, and a random-initialized model has many: the ones and zeros of its norms and zero-initialized
# projections), exports it and reports.
CHILD = """
import gc, json, sys, time
from pathlib import Path
import numpy as np
import onnxruntime
import torch
from diffusers import I2VGenXLUNet
from openspeedy import contracts
from openspeedy.export.random_checkpoint import FULL_SIZE
from openspeedy.example_inputs import example_inputs, unet_sizes
from openspeedy.export.onnx_unet import ContractUNet, consolidate, trace_to_onnx

directory = Path(sys.argv[1])
torch.manual_seed(0)
unet = I2VGenXLUNet(in_channels=4, out_channels=4, **FULL_SIZE.unet).eval()
parameters = sum(p.numel() for p in unet.parameters())
distinct = {}
for p in unet.parameters():
    same = distinct.setdefault((p.shape, p.dtype), [])
    if not any(torch.equal(p, q) for q in same):
        same.append(p)
distinct_elements = sum(p.numel() for group in distinct.values() for p in group)
# PyTorch outputs at two small shapes (one not a multiple of the upsampling factor), for onnxruntime.
with torch.no_grad():
    cases = [example_inputs(contracts.UNET_EXPORTED, unet_sizes(unet.config, f, h, w, b), {"TIMESTEP": 501, "FPS": 16},
                            generator=torch.Generator().manual_seed(1)) for b, f, h, w in ((2, 2, 8, 8), (1, 3, 5, 12))]
    expected = [ContractUNet(unet)(*(case[n] for n in contracts.UNET_EXPORTED.input_names)).numpy() for case in cases]
start = time.time()
trace_to_onnx(unet, directory / "raw.onnx")
del unet, distinct
gc.collect()
consolidate(directory / "raw.onnx", directory / "model.onnx")
export_s = time.time() - start
session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
relative = [float(np.abs(session.run(None, {n: v.numpy() for n, v in case.items()})[0] - e).max() / np.abs(e).max())
            for case, e in zip(cases, expected)]
print(json.dumps(dict(parameters=parameters, distinct_elements=distinct_elements, export_s=export_s,
                      relative=relative)))
"""


def test_full_size_unet_exports(tmp_path):
    directory = tmp_path / "full"
    directory.mkdir()
    try:
        start = time.time()
        child = subprocess.run([sys.executable, "-c", CHILD, str(directory)], capture_output=True, text=True,
                               timeout=900)
        assert child.returncode == 0, child.stderr[-4000:]
        report = json.loads(child.stdout.strip().splitlines()[-1])
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
        print(f"full-size export: {time.time() - start:.0f} s in all, {report['export_s']:.0f} s export, "
              f"peak {peak_gb:.1f} GB")
        assert report["parameters"] == PUBLISHED_PARAMETERS
        print(f"full-size onnxruntime vs PyTorch, max relative error: {report['relative']}")
        assert max(report["relative"]) < 1e-4

        path = directory / "model.onnx"
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
        graph = model.graph

        # Size: every weight is there, in the one external data file, in FP32.
        external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        locations = {entry.value for t in external for entry in t.external_data if entry.key == "location"}
        assert locations == {"model.onnx.data"}
        elements = sum(_count(t) for t in graph.initializer)
        assert abs(elements - report["distinct_elements"]) / report["distinct_elements"] < 1e-3
        data_bytes = (directory / "model.onnx.data").stat().st_size
        assert data_bytes == 4 * sum(_count(t) for t in external)
        assert all(t.data_type == onnx.TensorProto.FLOAT for t in external)
        assert data_bytes > 2**31  # past protobuf's limit: the reason for external data
        assert path.stat().st_size < 16 * 2**20  # the graph itself stays small
        print(f"full-size ONNX: graph {path.stat().st_size / 2**20:.1f} MiB, data {data_bytes / 1e9:.2f} GB")

        # Signature: the contract's names, dtypes, ranks and symbolic dimensions.
        assert [i.name for i in graph.input] == list(contracts.UNET_EXPORTED.input_names)
        assert [o.name for o in graph.output] == list(contracts.UNET_EXPORTED.output_names)
        for value in (*graph.input, *graph.output):
            spec = _spec(value.name)
            tensor_type = value.type.tensor_type
            assert tensor_type.elem_type == {"FP32": onnx.TensorProto.FLOAT, "INT64": onnx.TensorProto.INT64}[
                spec.datatype]
            dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
            assert len(dims) == len(spec.dims)
            for axis, name in spec.varying_axes.items():
                assert dims[axis] == name, (spec.name, dims)
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
        assert dims["SAMPLE"][1] == 4 and dims["ENCODER_HIDDEN_STATES"][2] == 1024
        assert dims["IMAGE_EMBEDDINGS"][1:] == [1, 1024]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _count(tensor) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def _spec(name: str):
    specs = {s.name: s for s in (*contracts.UNET_EXPORTED.inputs, *contracts.UNET_EXPORTED.outputs)}
    return specs[name]
