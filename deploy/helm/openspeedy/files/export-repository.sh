# The export init container: `openspeedy export "$@"` into $EXPORT_VOLUME/$REPOSITORY_SUBPATH, atomically.
# Pods that start together take turns under a lock on the volume; the first exports, the others find
# the completion marker and start at once. The export goes to a temporary folder on the same volume and
# is renamed into place (one rename: a reader sees the old repository or the whole new one, never part),
# and the marker is written into it before the rename. A failed export leaves no repository behind.
set -eu
volume="${EXPORT_VOLUME:-/export}"
repository="$volume/$REPOSITORY_SUBPATH"
marker="$repository/.openspeedy-export-complete"
mkdir -p "$(dirname "$repository")"
exec 9>"$volume/.openspeedy-export.lock"
echo "waiting for the export lock on $volume"
flock 9
if [ -f "$marker" ] && [ "${FORCE_EXPORT:-false}" != true ]; then
    echo "a complete model repository is in $repository ($(cat "$marker")): not exporting" \
         "(modelRepository.export.force redoes it)"
    exit 0
fi
staging="$(mktemp -d "$(dirname "$repository")/.openspeedy-export.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
openspeedy export "$@" --output "$staging/repository"
date -u +%Y-%m-%dT%H:%M:%SZ > "$staging/repository/.openspeedy-export-complete"
if [ -e "$repository" ]; then
    # Pods still running mount the old folder: it stays, as the previous export, until the next one.
    rm -rf "$repository.previous"
    mv "$repository" "$repository.previous"
fi
mv "$staging/repository" "$repository"
echo "exported the model repository to $repository"
