#!/usr/bin/env bash
# Sets up this host for berth: Podman + runc + busybox-static (and chromium for the browser
# tests) from Debian, the containers.conf drop-in only where this host needs it, and the project
# venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need_apt+=(busybox-static)
# For the tests: git mounts, a private registry on loopback (with htpasswd), unit-file checks.
command -v git >/dev/null || need_apt+=(git)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The console's browser tests (tests/browser): Playwright (a test extra) drives Debian's chromium
# by path; it never downloads a browser of its own.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: need root to install ${need_apt[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The package starts a registry on :5000 where systemd runs; the tests start their own.
  if [[ " ${need_apt[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

# Does a container start here as is? Try a throwaway rootfs with busybox (no image needed).
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
mkdir -p "$probe_dir/bin" && cp /bin/busybox "$probe_dir/bin/"
dropin=/etc/containers/containers.conf.d/50-berth-host.conf
if ! podman run --rm --rootfs "$probe_dir" /bin/busybox true >/dev/null 2>"$probe_dir.err"; then
  if [ -f "$dropin" ]; then
    echo "setup: containers fail to start even with $dropin:" >&2
    cat "$probe_dir.err" >&2
    exit 1
  fi
  echo "setup: a test container failed to start here:"
  sed 's/^/setup:   /' "$probe_dir.err"
  echo "setup: installing $dropin (runc instead of crun, explicit lower ulimits);"
  echo "setup: a workstation with cgroup v2 and full root does not need it"
  mkdir -p "$(dirname "$dropin")"
  cat > "$dropin" <<'CONF'
# Written by berth's scripts/setup-host.sh because a test container failed to start here.
# crun fails on cgroup v1 hybrid hosts ("cgroups in hybrid mode not supported"): use runc.
# Without CAP_SYS_RESOURCE podman's default rlimits fail ("setrlimit ... not permitted").
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
  podman run --rm --rootfs "$probe_dir" /bin/busybox true
  echo "setup: containers start now"
fi
rm -f "$probe_dir.err"

# The venv is (re)installed when it is missing or pyproject.toml changed since it was made.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.berth-installed 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the venv in .venv (pyproject.toml changed or no venv yet)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > .venv/.berth-installed
fi
echo "setup: host ready"
