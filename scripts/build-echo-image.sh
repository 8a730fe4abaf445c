#!/usr/bin/env bash
# Builds localhost/berth-echo:1 from config/examples/echo-image and Debian's busybox-static.
# Usage: scripts/build-echo-image.sh [TAG]   (skips the build when the image exists, unless FORCE=1)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/berth-echo:1}
if [ "${FORCE:-0}" != 1 ] && podman image exists "$tag"; then
  echo "image: $tag already built"
  exit 0
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r config/examples/echo-image/. "$ctx/"
cp /bin/busybox "$ctx/busybox"
podman build -q -t "$tag" "$ctx" >/dev/null
echo "image: built $tag"
