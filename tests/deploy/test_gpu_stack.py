"""The GPU stack in one place: requirements/gpu-lock.txt against docker/Dockerfile, pyproject.toml's
hopper, fp8 and server extras and bench/gpu_serving.sh, and requirements/locks.py, which the image build and
the GPU benchmark script run to hold themselves to the lock.

Text comparisons only: CUDA torch cannot be installed on the machines that run these tests.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
GPU_LOCK = ROOT / "requirements" / "gpu-lock.txt"
CPU_LOCK = ROOT / "requirements" / "lock.txt"
LOCKS_SCRIPT = ROOT / "requirements" / "locks.py"
GPU_SERVING = ROOT / "bench" / "gpu_serving.sh"


def load_locks():
    spec = importlib.util.spec_from_file_location("locks", LOCKS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


locks = load_locks()


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def extras() -> dict[str, list[Requirement]]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: [Requirement(r) for r in requirements]
            for name, requirements in pyproject["project"]["optional-dependencies"].items()}


def run_locks(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCKS_SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


# --- the lock ---------------------------------------------------------------------------------------------


def test_gpu_lock_pins_the_benchmarked_stack():
    pins = locks.read_lock(GPU_LOCK)
    # What every GPU result file and docs/speed.md's QuACK runs name.
    assert pins["torch"] == "2.11.0+cu130"
    assert pins["quack-kernels"] == "0.6.5"
    assert pins["nvidia-cutlass-dsl"] == pins["nvidia-cutlass-dsl-libs-cu13"] == "4.8.1"
    assert pins["diffusers"] == "0.42.1"
    assert pins["torchao"] == "0.18.0"  # the version carried to the GPU machine
    assert pins["transformers"].startswith("5.17.")
    # pyproject.toml's core dependency (numpy<2) must admit the lock's NumPy.
    core = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    numpy = next(r for r in core if r.name == "numpy")
    assert numpy.specifier.contains(pins["numpy"])


@pytest.mark.parametrize("text, message", [
    ("torch>=2.11\n", "is not an exact pin"),
    ("torch==2.11.0\nTorch==2.11.0\n", "pinned twice"),
])
def test_a_lock_holds_exact_pins_only(tmp_path, text, message):
    lock = tmp_path / "lock.txt"
    lock.write_text(text)
    with pytest.raises(ValueError, match=message):
        locks.read_lock(lock)


@pytest.mark.parametrize("extra", ["hopper", "fp8"])
def test_gpu_extra_pins_equal_the_gpu_lock(extra):
    pins = locks.read_lock(GPU_LOCK)
    requirements = extras()[extra]
    assert requirements, f"the {extra} extra is empty"
    for requirement in requirements:
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{requirement} is not an exact pin"
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} ({extra} extra) is not in {GPU_LOCK.name}"
        assert specifiers[0].version == pins[name], \
            f"{requirement.name}: {extra} extra {specifiers[0].version}, {GPU_LOCK.name} {pins[name]}"


def environment(system: str, machine: str, python: str) -> dict[str, str]:
    return {"platform_system": system, "platform_machine": machine, "python_version": python,
            "sys_platform": system.lower(), "extra": ""}


def extra_applies(env: dict[str, str], extra: str = "hopper") -> bool:
    """Whether installing the server extra in ``env`` brings ``extra`` (hopper: QuACK and the DSL; fp8: torchao)."""
    server = extras()["server"]
    return any(r.name == "openspeedy" and extra in r.extras and (r.marker is None or r.marker.evaluate(env))
               for r in server)


@pytest.mark.parametrize("env, expected", [
    (environment("Linux", "x86_64", "3.12"), True),  # the NGC image and the GPU machines
    (environment("Linux", "x86_64", "3.13"), True),
    (environment("Linux", "x86_64", "3.11"), False),  # the CPU development and CI machines
    (environment("Linux", "aarch64", "3.12"), False),
    (environment("Darwin", "arm64", "3.12"), False),
    (environment("Windows", "AMD64", "3.12"), False),
])
def test_server_extra_brings_quack_and_torchao_on_linux_x86_64_with_python_3_12(env, expected):
    assert extra_applies(env, "hopper") is expected
    assert extra_applies(env, "fp8") is expected


def test_cpu_install_never_resolves_the_extras():
    """`make install` (CI) installs the CPU lock, then the package without its dependencies: the server
    extra's QuACK and its 92 MB library wheels never come in there."""
    install = re.search(r"^\$\(INSTALLED\):.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert "-r requirements/lock.txt" in install
    assert re.search(r"pip install .*--no-deps -e \.$", install, re.M)
    cpu = locks.read_lock(CPU_LOCK)
    assert not [name for name in cpu if name.startswith(("quack", "nvidia-cutlass-dsl", "torchao"))]


# --- the Dockerfile -----------------------------------------------------------------------------------------


def test_dockerfile_takes_every_package_version_from_the_locks():
    args = dockerfile_args()
    assert (ROOT / args["GPU_LOCK_FILE"]).resolve() == GPU_LOCK
    assert (ROOT / args["LOCK_FILE"]).resolve() == CPU_LOCK
    text = DOCKERFILE.read_text()
    assert re.search(r'pip install --index-url "\$\{TORCH_INDEX_URL\}" -c "\$\{GPU_LOCK_FILE\}" torch$', text, re.M)
    assert 'locks.py constraints "${GPU_LOCK_FILE}" "${LOCK_FILE}"' in text
    assert 'locks.py installed "${GPU_LOCK_FILE}"' in text
    # No version of a package of its own: a pin here could disagree with the lock.
    assert not re.findall(r"[A-Za-z0-9_.-]+==\d", text)
    assert not [name for name in args if name.endswith("_VERSION") and name not in ("TRITON_VERSION",
                                                                                      "PYTHON_VERSION")]


def test_dockerfile_torch_index_and_python_are_the_locks():
    args = dockerfile_args()
    torch = locks.read_lock(GPU_LOCK)["torch"]
    assert args["TORCH_INDEX_URL"].rstrip("/").rsplit("/", 1)[1] == torch.split("+", 1)[1]  # cu130
    lock_python = re.search(r"for CPython (\d+\.\d+)", GPU_LOCK.read_text()).group(1)
    assert args["PYTHON_VERSION"] == lock_python
    # The server extra's QuACK marker admits the image's Python.
    assert extra_applies(environment("Linux", "x86_64", args["PYTHON_VERSION"]))


def test_base_image_is_a_cuda_13_triton_release_with_the_chunked_encoding_fix():
    """From 25.08 on, nvcr.io tritonserver YY.MM is CUDA 13 and ships Triton 2.N with N = 12 * YY + MM - 248
    (25.08 is 2.60; 25.07 was the patch release 2.59.1, the first with NVIDIA's fix for the chunked-encoding
    crash of 2.51). The build checks the image's own TRITON_SERVER_VERSION against TRITON_VERSION."""
    args = dockerfile_args()
    base = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", args["BASE_IMAGE"])
    assert base, f"BASE_IMAGE {args['BASE_IMAGE']} is not an nvcr.io tritonserver -py3 image"
    year, month = int(base.group(1)), int(base.group(2))
    assert (year, month) >= (25, 8), "releases before 25.08 are CUDA 12 (and 2.51 crashes on chunked requests)"
    assert args["TRITON_VERSION"] == f"2.{12 * year + month - 248}.0"
    assert '"${TRITON_SERVER_VERSION:-unset}" != "${TRITON_VERSION}"' in DOCKERFILE.read_text()


def test_tensorrt_engines_are_built_in_the_image_that_serves_them():
    """An engine loads only under the TensorRT that built it: the export's build instructions name the base."""
    from openspeedy.export.tensorrt_engine import NGC_IMAGE

    assert NGC_IMAGE == dockerfile_args()["BASE_IMAGE"]


# --- bench/gpu_serving.sh ---------------------------------------------------------------------------------


def test_gpu_serving_checks_what_it_installs_against_the_gpu_lock():
    script = GPU_SERVING.read_text()
    check = script.index('locks.py wheels requirements/gpu-lock.txt "${WHEELS[@]}"')
    assert check < script.index('pip install -q --no-index --no-deps --no-compile "${WHEELS[@]}"')
    assert "locks.py installed requirements/gpu-lock.txt torch" in script
    # The carried wheels' versions come from the lock, not from the script.
    assert not re.findall(r"\.whl/[A-Za-z_]+-\d", script)


# --- requirements/locks.py ----------------------------------------------------------------------------------


def test_constraints_put_the_gpu_lock_over_the_cpu_lock(tmp_path):
    gpu, cpu = tmp_path / "gpu.txt", tmp_path / "cpu.txt"
    gpu.write_text("# a comment\ntorch==2.11.0+cu130\nHuggingface_Hub==1.33.0  # below 2 for transformers\n")
    cpu.write_text("torch==2.13.0\nhuggingface-hub==2.4.0\nsix==1.17.0\n")
    result = run_locks("constraints", str(gpu), str(cpu))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch==2.11.0+cu130", "huggingface-hub==1.33.0", "six==1.17.0"]


def test_the_real_locks_merge():
    result = run_locks("constraints", str(GPU_LOCK), str(CPU_LOCK))
    assert result.returncode == 0, result.stderr
    merged = result.stdout.split()
    assert "torch==2.11.0+cu130" in merged and "torch==2.13.0" not in merged
    assert len({line.split("==")[0] for line in merged}) == len(merged)


def test_wheels_must_be_the_locks_versions(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("diffusers==0.42.1\npython-rapidjson==1.25\n")
    good = [tmp_path / "diffusers-0.42.1-py3-none-any.whl",
            tmp_path / "python_rapidjson-1.25-cp312-cp312-manylinux_2_17_x86_64.whl"]
    for wheel in good:
        wheel.touch()
    assert run_locks("wheels", str(lock), *map(str, good)).returncode == 0

    old = tmp_path / "diffusers-0.41.0-py3-none-any.whl"
    stranger = tmp_path / "tenacity-9.2.1-py3-none-any.whl"
    old.touch()
    stranger.touch()
    result = run_locks("wheels", str(lock), str(old), str(stranger), str(tmp_path / "numpy-*.whl"))
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert len(problems) == 3
    assert "diffusers 0.41.0" in problems[0] and "pins 0.42.1" in problems[0]
    assert "tenacity is not in" in problems[1]
    assert "no such wheel" in problems[2]


def test_installed_must_be_the_locks_versions(tmp_path):
    from importlib.metadata import version

    lock = tmp_path / "lock.txt"
    lock.write_text(f"pytest=={version('pytest')}\nPyYAML==0.0.1\nnot-a-package-here==1.0\n")
    assert run_locks("installed", str(lock), "pytest").returncode == 0

    result = run_locks("installed", str(lock))
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert len(problems) == 2
    assert f"pyyaml {version('PyYAML')} is installed" in problems[0] and "pins 0.0.1" in problems[0]
    assert "not-a-package-here is not installed" in problems[1]
    assert "is not in" in run_locks("installed", str(lock), "six").stderr
