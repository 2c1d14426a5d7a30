"""The compile artifacts round-trip: what one process compiled, a fresh process with empty compile caches
loads and serves without compiling; artifacts of another environment are refused with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# A process that compiles a small network the way the components do (static shapes), then prints what
# its compiles were. ``save`` writes the artifacts, ``load`` reads them first.
SCRIPT = """
import json, sys
from pathlib import Path
import torch
from openspeedy import compile_artifacts

mode, directory = sys.argv[1], Path(sys.argv[2])
network = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU())
message = compile_artifacts.load(directory, torch.device("cpu")) if mode == "load" else ""
with compile_artifacts.recording():
    torch.compile(network, dynamic=False)(torch.randn(1, 4, 16, 16))
    saved = compile_artifacts.save(directory, torch.device("cpu")) if mode == "save" else 0
print(json.dumps({"message": message, "saved": saved, **compile_artifacts.compile_counts()}))
"""


def run(mode: str, directory: Path, cache: Path) -> dict:
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(directory)], env=env, capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_the_artifacts_instead_of_compiling(tmp_path):
    made = run("save", tmp_path, tmp_path / "cache-export")
    assert made["compiled"] == 1 and made["saved"] >= 1
    header = json.loads((tmp_path / "compile_artifacts.json").read_text())
    assert header["environment"]["torch"] and header["entries"]

    fresh = run("load", tmp_path, tmp_path / "cache-replica")  # an empty cache directory
    assert fresh["message"].startswith("compile artifacts: loaded"), fresh["message"]
    assert fresh["compiled"] == 0 and fresh["from_cache"] == 1


def test_artifacts_of_another_environment_are_refused_with_the_reason(tmp_path):
    run("save", tmp_path, tmp_path / "cache-export")
    header_file = tmp_path / "compile_artifacts.json"
    header = json.loads(header_file.read_text())
    header["environment"]["torch"] = "0.0.1"
    header_file.write_text(json.dumps(header))

    fresh = run("load", tmp_path, tmp_path / "cache-replica")
    assert "made for another environment: torch '0.0.1'" in fresh["message"]
    assert fresh["message"].endswith("compiling instead")
    assert fresh["compiled"] == 1


def test_no_artifacts_says_so(tmp_path):
    import torch

    from openspeedy import compile_artifacts

    assert "none in" in compile_artifacts.load(tmp_path, torch.device("cpu"))


# A fresh replica: loads the tiny repository's compiled decoder with empty compile caches and prints what
# its warm-up compiled (the counts) and what the compile log said.
REPLICA = """
import json, logging, sys
from pathlib import Path
from openspeedy import compile_artifacts
from openspeedy.components import load_component

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("openspeedy").addHandler(handler)
logging.getLogger("openspeedy").setLevel(logging.INFO)
model = Path(sys.argv[1])
config = (model / "config.pbtxt").read_text()
parameters = dict(
    (line.split('key: "')[1].split('"')[0], line.split('string_value: "')[1].split('"')[0])
    for line in config.splitlines() if line.startswith("parameters")
)
load_component(model.name, model / "1", "cpu", "float32", parameters)
print(json.dumps({"log": lines, **compile_artifacts.compile_counts()}))
"""


def test_export_ships_the_compiled_decoder_and_a_fresh_replica_loads_it_without_compiling(tmp_path):
    from openspeedy.export.__main__ import main as export_main

    repository = tmp_path / "repository"
    export_main(["--tiny", "--output", str(repository), "--vae-decoder-compile-mode", "default",
                 "--warmup-shapes", "2x64x64", "--compile-artifacts"])
    decoder = repository / "vae_decoder"
    assert (decoder / "1" / "compile_artifacts.bin").exists()
    assert not (repository / "unet" / "1" / "compile_artifacts.bin").exists()  # eager on CPU: nothing to ship

    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "replica-cache"),
                        "TRITON_CACHE_DIR": str(tmp_path / "replica-cache" / "triton")}
    done = subprocess.run([sys.executable, "-c", REPLICA, str(decoder)], env=env, capture_output=True, text=True,
                          timeout=900, check=True)
    replica = json.loads(done.stdout.strip().splitlines()[-1])
    assert replica["compiled"] == 0 and replica["from_cache"] >= 1, replica
    assert any(line.startswith("vae_decoder: compile artifacts: loaded") for line in replica["log"]), replica["log"]
    assert any("warm-up compiled 0 graphs" in line for line in replica["log"]), replica["log"]
