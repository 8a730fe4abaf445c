#!/usr/bin/env bash
# Builds localhost/berth-grpc-server:1 (a gRPC server: grpcio, the standard health service,
# a unary and a server-streaming method; config/examples/grpc-server-image) with no registry
# but Debian's and PyPI, as scripts/build-model-server-image.sh does, on the same base:
#   1. the Debian 12 base, localhost/berth-debian:12, is the model-server image's (made by
#      that script when missing: mmdebstrap + podman import);
#   2. the pinned wheels of requirements.txt, fetched with `pip download` on the host
#      (hashes checked), cached in .cache/grpc-server-image/;
#   3. `podman build --network none` installs them offline into a venv in the image.
# Skips everything when the image was built from the same sources and base (a hash label),
# so it is cheap to call before every test run. Usage: scripts/build-grpc-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/berth-grpc-server:1}
base=localhost/berth-debian:12
src=config/examples/grpc-server-image
cache=.cache/grpc-server-image
pip=.venv/bin/pip
[ -x "$pip" ] || pip=pip3
mkdir -p "$cache"

fail() { echo "grpc-server image: $*" >&2; exit 1; }

exec 9>"$cache/lock"
flock -w 1200 9 || fail "another build held $cache/lock for 20 minutes"

if ! podman image exists "$base"; then
  scripts/build-model-server-image.sh || fail "could not make the base $base"
fi

base_id() { podman image inspect --format '{{.Id}}' "$base" 2>/dev/null || true; }
source_hash() {
  (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum; base_id) | sha256sum | cut -c1-16
}

if podman image exists "$tag" &&
   [ "$(podman image inspect --format '{{index .Labels "io.berth.source-hash"}}' "$tag")" = "$(source_hash)" ]; then
  echo "image: $tag is up to date"
  exit 0
fi

echo "image: fetching the gRPC server's wheels (pip download, hashes checked)"
# The image's Python is Debian 12's 3.11 on x86_64: ask for those wheels whatever the host runs.
if ! timeout 600 "$pip" download --quiet --disable-pip-version-check --retries 3 --timeout 60 \
     --only-binary=:all: --require-hashes --no-deps --python-version 3.11 --implementation cp \
     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
     -d "$cache/wheels" -r "$src/requirements.txt"; then
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
