#!/usr/bin/env bash
# On the GPU machine: a Python environment whose numpy is 1.26 (the pytriton stub needs NumPy 1.x, see
# gpu_serving.py), with the system's torch and transformers, the trimmed tritonserver from the
# nvidia-pytriton wheel and tritonclient's Python code; then the served-vs-in-process benchmark
# (bench.gpu_serving), or the benchmark module named by MODULE (bench.multi_gpu_serving on a machine of
# several GPUs). Run from the repository root.
# Expects, in .whl/: numpy 1.26 (cp312), diffusers, importlib_metadata, python_rapidjson and tenacity
# wheels; triton-py312.tar.xz (pytriton/tritonserver with python_backend_stubs/3.12 only, and
# nvidia_pytriton.libs without its libpython3.13, from the nvidia-pytriton 0.7.0 wheel: 27 MB, so all
# of it fits one device call's 64 MiB); tritonclient-py.tar.xz (the tritonclient package of the
# tritonclient 2.51.0 wheel, without perf_analyzer). The wheels and the machine's torch must be the
# versions of requirements/gpu-lock.txt (the stack the image installs); the run stops first otherwise.
set -euo pipefail
OUT=${1:?usage: gpu_serving.sh OUT_DIR [args...]}; shift
PARENT_SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv --system-site-packages /tmp/venv
SITE=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# python3 there is itself a virtual environment (torch and transformers live in it): chain to it after
# this environment's own packages, so numpy 1.26 here wins over its numpy 2.
echo "$PARENT_SITE" > "$SITE/parent-environment.pth"
if [ "${NUMPY1:-1}" = 1 ]; then
    # That environment's scikit-learn and SciPy are built for NumPy 2 and fail to import under 1.26;
    # transformers and diffusers import them only where importlib finds them (None in sys.modules
    # reads as "not installed" to importlib.util.find_spec), and OpenSpeedy needs neither. A .pth
    # line, not sitecustomize.py: Ubuntu's own /usr/lib/python3.12/sitecustomize.py comes first.
    echo 'import sys; [sys.modules.setdefault(_name, None) for _name in ("sklearn", "scipy")]' \
        > "$SITE/hide-numpy2-only-packages.pth"
fi
# NUMPY1=0 keeps the machine's NumPy 2 (OpenSpeedy moves every non-BYTES tensor through DLPack).
NUMPY_WHEEL=$([ "${NUMPY1:-1}" = 1 ] && echo .whl/numpy-*.whl || true)
WHEELS=($NUMPY_WHEEL .whl/diffusers-*.whl .whl/importlib_metadata-*.whl .whl/python_rapidjson-*.whl \
    .whl/tenacity-*.whl)
python3 requirements/locks.py wheels requirements/gpu-lock.txt "${WHEELS[@]}"
python3 requirements/locks.py installed requirements/gpu-lock.txt torch
/tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-compile "${WHEELS[@]}"
/tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-build-isolation -e .
tar xJf .whl/triton-py312.tar.xz -C "$SITE"
tar xJf .whl/tritonclient-py.tar.xz -C "$SITE"
export PATH=/tmp/venv/bin:$PATH PYTHONUNBUFFERED=1
# What the Python backend stub will import, checked first (a failure here is clearer than in the stub).
python -c 'import numpy, torch, transformers, openspeedy.components, openspeedy.pipeline, openspeedy.video
print("numpy", numpy.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
python -m "${MODULE:-bench.gpu_serving}" --out "$OUT" "$@"
