"""Git checkouts for `type = "git"` mounts: one clone per revision, never repeated.

`checkout(mount, dest)` clones `mount.source` at `mount.ref` into `dest` and returns the
commit it holds. The clone is made in a sibling `.partial` directory and renamed into place
when complete, so `dest` existing means a whole checkout (a crash mid-clone leaves only a
`.partial` that the next try removes).

Credentials (`credentials_file`) never reach a command line, an environment variable's value
or a message. The caller reads the file through the checked opener (`config.credentials`:
under `credentials_roots`, no symbolic links) and hands its bytes to `checkout`, which puts
them in a 0600 file of its own in a private, empty `HOME` made beside the checkout for the
length of the clone (so no link swapped after the check can make git or ssh read another
file), and removes both afterwards. git is given a credential helper that `cat`s that copy,
whose path travels in `BERTH_GIT_CREDENTIALS`. The file is in git's own credential format, as
`git credential fill` prints it (`username=...` and `password=...` lines; a token goes in
`password`). For ssh URLs (`ssh://`, `user@host:path`) it is instead an SSH private key,
given to ssh with `-i`.

Nothing of root's own is used: git never prompts (`GIT_TERMINAL_PROMPT=0`, no stdin), the
user's helpers are reset, `HOME` is the private directory (no `~/.netrc`, `~/.gitconfig`,
`~/.git-credentials`), the global and system git configs are not read, ssh reads no config
file, uses no agent and, without a key file, offers no key at all. git speaks only the URL's
own protocol (`protocol.allow=never` but that one), so a redirect or a submodule cannot
switch it to `file://` or `ext::`.

A failed clone raises `MountError` with git's reason (its first `fatal:` line), e.g.
`git clone of https://example.com/x.git failed: fatal: repository '...' not found`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import trio

from config.spec import Mount

GIT_TIMEOUT = 600.0  # a model repository can be large; a hung server must not hang a worker
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,64}")
_HELPER = '!f() { test "$1" = get && cat "$BERTH_GIT_CREDENTIALS"; }; f'
_CREDENTIALS_NAME = "credentials"
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


class MountError(Exception):
    """A mount could not be prepared; the message is the reason, fit for an event.

    `repeated` is True when this is a remembered failure handed back without a new attempt
    (during the back-off), so the caller can avoid writing the same event every round.
    """

    def __init__(self, message: str, *, repeated: bool = False) -> None:
        super().__init__(message)
        self.repeated = repeated


def is_ssh_url(url: str) -> bool:
    return url.startswith("ssh://") or ("://" not in url and "@" in url and ":" in url)


def url_protocol(url: str) -> str:
    """git's name of the URL's protocol: "https", "ssh", "file" (scp-like is "ssh")."""
    if is_ssh_url(url):
        return "ssh"
    return url.split("://", 1)[0].lower()


def git_environment(mount: Mount, home: Path, credentials: Path | None = None) -> dict[str, str]:
    """The environment git runs with: no prompts, nothing of root's, the credentials if any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_"))}
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
    )
    if is_ssh_url(mount.source):
        ssh = ["ssh", "-F", os.devnull, "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]
        ssh += ["-o", "StrictHostKeyChecking=accept-new"]
        if credentials is not None:
            ssh += ["-o", "IdentitiesOnly=yes", "-i", str(credentials)]
        else:
            ssh += ["-o", "PubkeyAuthentication=no"]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    elif credentials is not None:
        env["BERTH_GIT_CREDENTIALS"] = str(credentials)
    return env


def git_config_args(mount: Mount, *, with_credentials: bool = False) -> list[str]:
    """`-c` options for every git call: one protocol, the credential helper (or none)."""
    # An empty value resets the helper list, so root's own helpers never answer (or store).
    args = [
        "-c",
        "protocol.allow=never",
        "-c",
        f"protocol.{url_protocol(mount.source)}.allow=always",
    ]
    args += ["-c", "credential.helper="]
    if with_credentials and not is_ssh_url(mount.source):
        args += ["-c", f"credential.helper={_HELPER}"]
    return args


async def checkout(mount: Mount, dest: Path, credentials: bytes | None = None) -> str:
    """Clone `mount` into `dest` (absent); returns the checked-out commit's id.

    `credentials` are the contents of the mount's `credentials_file`, read by the caller
    through `config.credentials`; None when it names none."""
    await trio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
    home = Path(await trio.to_thread.run_sync(_private_home, dest, credentials))
    try:
        copy = home / _CREDENTIALS_NAME if credentials is not None else None
        env = git_environment(mount, home, copy)
        config = git_config_args(mount, with_credentials=copy is not None)
        return await _clone(mount, dest, env, config)
    finally:
        await trio.to_thread.run_sync(_remove_tree, home)


def _private_home(dest: Path, credentials: bytes | None) -> str:
    """A fresh 0700 directory beside `dest` (never inside what is mounted), holding the
    credentials copy (0600) when there are any."""
    home = tempfile.mkdtemp(prefix=f".{dest.name}.home-", dir=dest.parent)
    if credentials is not None:
        fd = os.open(
            os.path.join(home, _CREDENTIALS_NAME),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        with os.fdopen(fd, "wb") as f:
            f.write(credentials)
    return home


async def _clone(mount: Mount, dest: Path, env: dict[str, str], config: list[str]) -> str:
    partial = dest.with_name(f".{dest.name}.partial")
    await trio.to_thread.run_sync(_remove_tree, partial)
    url = mount.source
    ref = mount.ref
    if ref is not None and _FULL_SHA.fullmatch(ref):
        # A commit: fetch just it (servers speaking protocol v2 allow any reachable commit),
        # else a full clone and a checkout.
        fetched = await _run_git([*config, "init", "--quiet", str(partial)], env, url) is None
        fetched = fetched and (
            await _run_git(
                [*config, "-C", str(partial), "fetch", "--quiet", "--depth", "1", url, ref],
                env,
                url,
            )
            is None
        )
        if fetched:
            await _git([*config, "-C", str(partial), "checkout", "--quiet", ref], env, url)
        else:
            await trio.to_thread.run_sync(_remove_tree, partial)
            await _full_clone(config, url, ref, partial, env)
    else:
        args = [*config, "clone", "--quiet", "--depth", "1"]
        if ref is not None:
            args += ["--branch", ref]
        error = await _run_git([*args, "--", url, str(partial)], env, url)
        if error is not None:
            await trio.to_thread.run_sync(_remove_tree, partial)
            if ref is None or not _SHORT_SHA.fullmatch(ref):
                raise MountError(_clone_failed(url, error))
            await _full_clone(config, url, ref, partial, env)  # an abbreviated commit id
    commit = (await _git([*config, "-C", str(partial), "rev-parse", "HEAD"], env, url)).strip()
    partial.rename(dest)
    return commit


async def _full_clone(
    config: list[str], url: str, ref: str, dest: Path, env: dict[str, str]
) -> None:
    await _git([*config, "clone", "--quiet", "--no-checkout", "--", url, str(dest)], env, url)
    await _git([*config, "-C", str(dest), "checkout", "--quiet", "--detach", ref], env, url)


async def _git(args: list[str], env: dict[str, str], url: str) -> str:
    """Run git; its stdout, or MountError naming the URL and git's last line of stderr."""
    result = await _run(args, env, url)
    if result.returncode != 0:
        raise MountError(_clone_failed(url, _last_line(result.stderr)))
    return result.stdout.decode(errors="replace")


async def _run_git(args: list[str], env: dict[str, str], url: str) -> str | None:
    """Run git; None on success, else git's last line of stderr."""
    result = await _run(args, env, url)
    return None if result.returncode == 0 else _last_line(result.stderr)


async def _run(
    args: list[str], env: dict[str, str], url: str
) -> subprocess.CompletedProcess[bytes]:
    git = shutil.which("git", path=env.get("PATH"))
    if git is None:
        raise MountError("git mounts need the `git` command on berthd's host; it is not on PATH")
    with trio.move_on_after(GIT_TIMEOUT) as scope:
        return await trio.run_process(
            [git, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            # berthd may run under UMask=0077 (its unit); a clone is bind-mounted into
            # replicas that may not run as root, so its files are made world-readable
            # (inside the 0700 state dir, which nobody else can enter).
            umask=0o022,
        )
    assert scope.cancelled_caught
    raise MountError(_clone_failed(url, f"git did not finish within {GIT_TIMEOUT:.0f}s"))


def _clone_failed(url: str, reason: str) -> str:
    return f"git clone of {url} failed: {reason}"


def _last_line(stderr: bytes) -> str:
    """git's reason: its first `fatal:` line (later ones say less), else its last line."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    fatal = [line for line in lines if line.startswith("fatal:")]
    reason = fatal[0] if fatal else lines[-1] if lines else "no reason given"
    # git may echo a URL with a user name and password in it; never pass a password on.
    return _URL_PASSWORD.sub(r"\1***@", reason)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
