#!/bin/sh
# OpenSpeedy container entrypoint: the server starts the one way it starts everywhere, `openspeedy serve`
# (tritonserver with the watchdog and the restricted admin APIs). Its flags default to the image's
# OPENSPEEDY_* environment (docker/README.md lists them); nothing here repeats them.
#
# No arguments, or arguments that start with "-": `openspeedy serve` with those arguments (tritonserver's
# own flags go after "--"). Anything else runs instead of the server: `docker run IMAGE openspeedy export ...`,
# `bash`.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
exec openspeedy serve "$@"
