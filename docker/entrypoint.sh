#!/bin/sh
# OpenSpeedy container entrypoint.
#
# No arguments, or arguments that start with "-": tritonserver on the model repository with the
# flags openspeedy.server uses; the arguments are appended (later flags win in tritonserver).
# Anything else runs instead of the server: `docker run IMAGE openspeedy export ...`, `bash`.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

repository="${OPENSPEEDY_MODEL_REPOSITORY:-/models}"
if ! find "$repository" -mindepth 2 -maxdepth 2 -name config.pbtxt 2>/dev/null | grep -q .; then
    echo "openspeedy: no model in $repository: mount a repository built by 'openspeedy export' there," \
         "or build the image with --build-arg MODEL_SOURCE=tiny|checkpoint (see docker/README.md)" >&2
    exit 2
fi

# The python backend moves GPU tensors between model processes through a per-GPU CUDA pool (Triton's
# default, 64 MiB, runs dry at 704x1280 and falls back to host copies); openspeedy.server sets the same.
pools=""
if command -v nvidia-smi >/dev/null 2>&1; then
    for gpu in $(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null); do
        pools="$pools --cuda-memory-pool-byte-size=$gpu:${OPENSPEEDY_CUDA_POOL_BYTES:-268435456}"
    done
fi

# shellcheck disable=SC2086 # $pools is a list of flags
exec tritonserver $pools \
    --model-repository="$repository" \
    --http-port="${OPENSPEEDY_HTTP_PORT:-8000}" \
    --grpc-port="${OPENSPEEDY_GRPC_PORT:-8001}" \
    --metrics-port="${OPENSPEEDY_METRICS_PORT:-8002}" \
    --strict-readiness=true \
    --exit-timeout-secs="${OPENSPEEDY_EXIT_TIMEOUT_SECS:-30}" \
    --log-verbose="${OPENSPEEDY_LOG_VERBOSE:-0}" \
    "$@"
