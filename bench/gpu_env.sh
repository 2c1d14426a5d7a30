#!/usr/bin/env bash
# On the GPU machine (no network, its own python3 with torch, transformers and pytest): a virtual
# environment at /tmp/venv over that python3, plus what the machine lacks, carried as wheels in .whl/:
# diffusers, QuACK with the CUTLASS DSL for the UNet's fused GEGLU and residual GEMMs, and torchao for
# the fp8 preset's linear layers.
#
#   bash bench/gpu_env.sh libs      # .whl/ holds cutlass_cu13.tar.xz alone (see below)
#   bash bench/gpu_env.sh install   # .whl/ holds the other wheels; then use /tmp/venv/bin/python
#
# The DSL's CUDA 13 libraries come as a 92 MB wheel, over the 64 MiB that one call to the machine may
# carry; an xz tar of its unpacked files is about 61 MiB. So it travels alone, in a first call that
# unpacks it into /tmp/venv, and the other wheels follow in the next call: /tmp survives between calls
# while the machine stays warm. Make the tar here from the wheel named in requirements:
#   unzip -q nvidia_cutlass_dsl_libs_cu13-*.whl -d x && tar cf - -C x . | xz -9 > .whl/cutlass_cu13.tar.xz
# The other wheels (--no-deps, cp312 manylinux): diffusers, importlib_metadata, zipp, quack-kernels,
# nvidia-cutlass-dsl, nvidia-cutlass-dsl-libs-core, nvidia-cutlass-dsl-libs-base, apache-tvm-ffi,
# torch-c-dlpack-ext, torchao (3.4 MB, its cp310-abi3 wheel), at the versions of requirements/gpu-lock.txt;
# and tritonclient-py.tar.xz (the tritonclient package of the tritonclient 2.51.0 wheel without
# perf_analyzer, 45 KB as xz), which the unit tests that read model configs import, so that
# `make test-gpu` collects every module there.
set -euo pipefail
VENV=/tmp/venv

make_venv() {
    [ -x "$VENV/bin/python" ] && return
    local parent_site
    parent_site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    python3 -m venv --system-site-packages --without-pip "$VENV"
    # The machine's python3 is itself a virtual environment (torch lives in it): chain to its
    # packages after this environment's own.
    echo "$parent_site" > "$(site)/parent-environment.pth"
}

site() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

case "${1:?usage: gpu_env.sh libs|install}" in
    libs)
        make_venv
        tar xJf .whl/cutlass_cu13.tar.xz -C "$(site)"
        echo "CUTLASS DSL CUDA 13 libraries unpacked into $(site)"
        ;;
    install)
        make_venv
        test -d "$(site)/nvidia_cutlass_dsl" || { echo "run 'gpu_env.sh libs' in the call before" >&2; exit 1; }
        # The stack measured is the stack shipped: each carried wheel, and the machine's torch, as the
        # GPU lock pins them (docker/Dockerfile installs from the same lock).
        python3 requirements/locks.py wheels requirements/gpu-lock.txt .whl/*.whl
        # pip comes from the machine's environment, through the chained path; it installs here.
        "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
        if [ -f .whl/tritonclient-py.tar.xz ]; then tar xJf .whl/tritonclient-py.tar.xz -C "$(site)"; fi
        # The package itself from the carried tree, importable as it is (no build step).
        echo "$PWD" > "$(site)/openspeedy-source.pth"
        "$VENV/bin/python" - <<'EOF'
import importlib
import torch
versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
for name in ("diffusers", "transformers", "numpy", "quack", "cutlass", "torchao", "tritonclient.grpc"):
    try:
        module = importlib.import_module(name)
        versions[name] = getattr(module, "__version__", "imported")
    except Exception as error:  # noqa: BLE001 - reported, the caller decides
        versions[name] = f"FAILED: {error!r}"[:200]
print(versions)
EOF
        ;;
    *) echo "usage: gpu_env.sh libs|install" >&2; exit 2 ;;
esac
