"""Git checkouts for `type = "git"` mounts: one clone per revision, never repeated.

`checkout(mount, dest)` clones `mount.source` at `mount.ref` into `dest` and returns the
commit it holds. The clone is made in a sibling `.partial` directory and renamed into place
when complete, so `dest` existing means a whole checkout (a crash mid-clone leaves only a
`.partial` that the next try removes).

Credentials (`credentials_file`) never reach a command line, an environment variable's value
or a message: git is given a credential helper that `cat`s the file, whose path travels in
`BERTH_GIT_CREDENTIALS`. The file is in git's own credential format, as `git credential fill`
prints it (`username=...` and `password=...` lines; a token goes in `password`). For ssh URLs
(`ssh://`, `user@host:path`) the file is instead an SSH private key, given to ssh with `-i`.
git never prompts (`GIT_TERMINAL_PROMPT=0`, no stdin), and the user's own helpers are reset.

A failed clone raises `MountError` with git's reason (its first `fatal:` line), e.g.
`git clone of https://example.com/x.git failed: fatal: repository '...' not found`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import trio

from config.spec import Mount

GIT_TIMEOUT = 600.0  # a model repository can be large; a hung server must not hang a worker
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,64}")
_HELPER = '!f() { test "$1" = get && cat "$BERTH_GIT_CREDENTIALS"; }; f'
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


def git_environment(mount: Mount) -> dict[str, str]:
    """The environment git runs with: no prompts, and the credentials file if any."""
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""})
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    if mount.credentials_file is not None:
        if is_ssh_url(mount.source):
            env["GIT_SSH_COMMAND"] = (
                "ssh -o BatchMode=yes -o IdentitiesOnly=yes "
                f"-o StrictHostKeyChecking=accept-new -i {shlex.quote(mount.credentials_file)}"
            )
        else:
            env["BERTH_GIT_CREDENTIALS"] = mount.credentials_file
    return env


def git_config_args(mount: Mount) -> list[str]:
    """`-c` options for every git call: the credential helper (or none at all)."""
    # An empty value resets the helper list, so root's own helpers never answer (or store).
    args = ["-c", "credential.helper="]
    if mount.credentials_file is not None and not is_ssh_url(mount.source):
        args += ["-c", f"credential.helper={_HELPER}"]
    return args


async def checkout(mount: Mount, dest: Path) -> str:
    """Clone `mount` into `dest` (absent); returns the checked-out commit's id."""
    partial = dest.with_name(f".{dest.name}.partial")
    await trio.to_thread.run_sync(_remove_tree, partial)
    await trio.Path(partial.parent).mkdir(parents=True, exist_ok=True)
    url = mount.source
    ref = mount.ref
    env = git_environment(mount)
    config = git_config_args(mount)
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
