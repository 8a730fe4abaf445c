#!/usr/bin/env bash
# Builds localhost/berth-echo:1 from config/examples/echo-image and Debian's busybox-static.
# Usage: scripts/build-echo-image.sh [TAG]. Skips the build when the image was built from the
# same sources (a hash label on the image), so it is cheap to call before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/berth-echo:1}
src=config/examples/echo-image
hash=$( (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum /bin/busybox | cut -d' ' -f1) | sha256sum | cut -c1-16)
if podman image exists "$tag" &&
   [ "$(podman image inspect --format '{{index .Labels "io.berth.source-hash"}}' "$tag")" = "$hash" ]; then
  echo "image: $tag is up to date"
  exit 0
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$src"/. "$ctx/"
cp /bin/busybox "$ctx/busybox"
podman build -q --label "io.berth.source-hash=$hash" -t "$tag" "$ctx" >/dev/null
echo "image: built $tag"
