#!/usr/bin/env bash
# Builds localhost/berth-model-server:1 (a KServe V2 model server, uvicorn + starlette, from
# config/examples/model-server-image) with no registry but Debian's and PyPI:
#   1. a Debian 12 base, localhost/berth-debian:12: `mmdebstrap` writes a rootfs tarball
#      (python3, python3-venv, ca-certificates), cached in .cache/model-server-image/, and
#      `podman import` makes it an image (made only when that image is missing);
#   2. the pinned wheels of requirements.txt, fetched with `pip download` on the host
#      (hashes checked), cached beside it;
#   3. `podman build --network none` installs them offline into a venv in the image.
# Skips everything when the image was built from the same sources and base (a hash label),
# so it is cheap to call before every test run. Usage: scripts/build-model-server-image.sh [TAG]
# Every step is bounded (timeout) and says what failed. Run as root the first time (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/berth-model-server:1}
base=localhost/berth-debian:12
src=config/examples/model-server-image
cache=.cache/model-server-image
pip=.venv/bin/pip
[ -x "$pip" ] || pip=pip3
mkdir -p "$cache"

fail() { echo "model-server image: $*" >&2; exit 1; }

# One build at a time (make image and a test session may both call this).
exec 9>"$cache/lock"
flock -w 1200 9 || fail "another build held $cache/lock for 20 minutes"

base_id() { podman image inspect --format '{{.Id}}' "$base" 2>/dev/null || true; }
source_hash() {
  (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum; base_id) | sha256sum | cut -c1-16
}

if podman image exists "$base" && podman image exists "$tag" &&
   [ "$(podman image inspect --format '{{index .Labels "io.berth.source-hash"}}' "$tag")" = "$(source_hash)" ]; then
  echo "image: $tag is up to date"
  exit 0
fi

if ! podman image exists "$base"; then
  rootfs=$cache/debian-bookworm-rootfs.tar
  if [ ! -s "$rootfs" ]; then
    if ! command -v mmdebstrap >/dev/null; then
      [ "$(id -u)" = 0 ] || fail "mmdebstrap is missing: run as root (apt-get install mmdebstrap)"
      echo "image: installing mmdebstrap from Debian"
      timeout 600 apt-get install -y -qq mmdebstrap >/dev/null 2>&1 ||
        { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq mmdebstrap >/dev/null; } ||
        fail "could not install mmdebstrap with apt-get"
    fi
    echo "image: making a Debian 12 rootfs with mmdebstrap (from the configured mirror)"
    if ! timeout 900 mmdebstrap --quiet --format=tar --variant=apt --include=python3,python3-venv,ca-certificates \
         bookworm "$cache/rootfs.part.tar" >"$cache/mmdebstrap.log" 2>&1; then
      tail -n 20 "$cache/mmdebstrap.log" >&2
      rm -rf "$cache/rootfs.part.tar"
      fail "mmdebstrap failed or ran past 15 minutes (log: $cache/mmdebstrap.log)"
    fi
    mv "$cache/rootfs.part.tar" "$rootfs"
  fi
  timeout 300 podman import --quiet "$rootfs" "$base" >/dev/null || fail "podman import of $rootfs failed"
  echo "image: imported $base"
fi

echo "image: fetching the server's wheels (pip download, hashes checked)"
if ! timeout 600 "$pip" download --quiet --disable-pip-version-check --retries 3 --timeout 60 \
     --only-binary=:all: --require-hashes --no-deps -d "$cache/wheels" -r "$src/requirements.txt"; then
  fail "pip download of $src/requirements.txt failed (is PyPI reachable?)"
fi

hash=$(source_hash)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$src"/. "$ctx/"
mkdir "$ctx/wheels"
cp "$cache"/wheels/*.whl "$ctx/wheels/"
if ! timeout 900 podman build -q --network none --label "io.berth.source-hash=$hash" \
     -t "$tag" "$ctx" >"$cache/build.log" 2>&1; then
  tail -n 20 "$cache/build.log" >&2
  fail "podman build failed (log: $cache/build.log)"
fi
echo "image: built $tag"
