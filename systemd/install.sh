#!/usr/bin/env bash
# Installs berth as a system service from the checkout this script sits in (run as root):
#   /opt/berth/venv                    berth and its dependencies, in a venv of their own
#   /opt/berth/doc/                    README.md, operations.md (the unit's Documentation=)
#   /etc/systemd/system/berthd.service the unit (systemd/berthd.service)
#   /etc/berth/berthd.toml             every setting, commented out with its default
#                                      (written once; an existing file is left alone)
#   /etc/berth/deployments/            specs applied at start and on `systemctl reload`
# then `systemctl daemon-reload`, `enable` and (re)start berthd when systemd runs this
# machine. A restart is safe: the replicas keep running and the new berthd adopts them.
# Safe to run again: it upgrades berth in place.
#
# BERTH_INSTALL_ROOT=/tmp/x installs under /tmp/x/... instead (for tests and packaging) and
# never touches systemd. The venv there works in place (venvs cannot be moved), while the
# files keep naming the real paths (/opt/berth/venv/bin/berthd, /etc/berth/...).
# PYTHON picks the interpreter for the venv (default python3, needs 3.11+).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=${BERTH_INSTALL_ROOT:-}
root=${root%/}
python=${PYTHON:-python3}
say() { echo "install: $*"; }

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or set BERTH_INSTALL_ROOT to install into a directory)" >&2
  exit 1
fi
if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
fi

# Debian's python3 needs python3-venv for `python3 -m venv`; berthd needs Podman at run time.
if [ -z "$root" ] && command -v apt-get >/dev/null; then
  need_apt=()
  "$python" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
  command -v podman >/dev/null || need_apt+=(podman)
  if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install: $python is older than 3.11" >&2; exit 1; }

opt=$root/opt/berth
etc=$root/etc/berth
unit_dir=$root/etc/systemd/system

# The venv: created once, then berth is (re)installed into it. pip builds from a copy of
# the sources so the checkout gets no build/ or *.egg-info from this.
if [ ! -x "$opt/venv/bin/python" ]; then
  say "creating the venv $opt/venv"
  mkdir -p "$opt"
  "$python" -m venv "$opt/venv"
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$src/pyproject.toml" "$src/README.md" "$src/config" "$src/daemon" "$src/proxy" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
say "installing berth from $src into $opt/venv"
"$opt/venv/bin/python" -m pip install -q --disable-pip-version-check "$stage"
# Same version number, new code: replace berth itself whatever pip thought of its version.
"$opt/venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall \
  --no-deps "$stage"
"$opt/venv/bin/berthd" --version >/dev/null

mkdir -p "$opt/doc"
install -m 0644 "$src/README.md" "$src/docs/operations.md" "$opt/doc/"
mkdir -p "$unit_dir"
install -m 0644 "$src/systemd/berthd.service" "$unit_dir/berthd.service"
say "unit: $unit_dir/berthd.service"

mkdir -p "$etc/deployments"
# Where the credential files specs name must lie (credentials_roots): root's alone.
install -d -m 0700 "$etc/credentials"
chmod 0755 "$etc" "$etc/deployments"
if [ -e "$etc/berthd.toml" ]; then
  say "keeping $etc/berthd.toml as it is"
else
  cat > "$etc/berthd.toml" <<'TOML'
# berthd's settings (written by systemd/install.sh). Every key is optional: the commented
# lines show the defaults. berthd's flags and BERTH_* environment variables win over this
# file. Paths relative to this file's directory. Reference: /opt/berth/doc/operations.md.

# SQLite store, git clones and (when berthd must start its own) the Podman socket.
# systemd's StateDirectory= creates /var/lib/berth; change both together.
# state_dir = "/var/lib/berth"

# The admin API socket the `berth` command talks to (BERTH_SOCKET).
# socket = "/run/berth/berth.sock"

# The Podman API. Unset: the system socket (unix:///run/podman/podman.sock, podman.socket)
# if it answers, else berthd starts `podman system service` on a socket in state_dir.
# podman_url = "unix:///run/podman/podman.sock"

# Every *.toml here is applied at start and on `systemctl reload berthd` (SIGHUP).
specs = "/etc/berth/deployments"

# Credential files a spec names (registry.password_file, registry.auth_file, a git mount's
# credentials_file, [endpoint.tls] cert/key) must lie under one of these: regular files
# owned by root, not writable by group or others, reached without symbolic links.
# credentials_roots = ["/etc/berth/credentials"]

[mounts]
# Bind mount sources must lie under one of these (after resolving symlinks). Whatever they
# say, /root, /boot, /etc, /proc, /sys, /dev, /run, /var/lib/containers, the state dir and
# the sockets are never mounted, /usr and /home only read-only.
# allowed_roots = ["/srv", "/data", "/models", "/var/lib/berth/volumes"]
# Podman volumes any deployment may mount; otherwise a deployment mounts only the volumes
# berth made for it.
# shared_volumes = []

[metrics]
# Prometheus exposition at http://LISTEN/metrics; off unless set. "[::1]:9464" for IPv6,
# ":9464" for every address.
# listen = "127.0.0.1:9464"

[events]
# `berth events` keeps what berthd did for this long (at least 1h), and at most this many of
# the newest events; older ones are dropped once an hour.
# keep = "168h"
# max_rows = 100000
TOML
  chmod 0644 "$etc/berthd.toml"
  say "wrote $etc/berthd.toml"
fi

if [ -n "$root" ]; then
  say "installed under $root; systemd left alone (BERTH_INSTALL_ROOT is set)"
elif [ -d /run/systemd/system ]; then  # sd_booted(3): systemd is PID 1
  systemctl daemon-reload
  systemctl enable berthd
  systemctl restart berthd  # picks up a new version; replicas keep running
  say "berthd enabled and started: systemctl status berthd; journalctl -u berthd"
else
  say "systemd is not running this machine (not PID 1): berthd cannot be started as a service here."
  say "run it by hand instead: $opt/venv/bin/berthd --config $etc/berthd.toml"
fi
