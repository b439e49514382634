"""The supervisor's private runtime directory: created safely, and refused when someone else
could have put anything in it.

The default directory sits in the shared temp dir when ``XDG_RUNTIME_DIR`` is unset, so
another local user can create it first and plant a ``sessions.json`` whose resume URL points
at their own listener (the next run would send RESUME, with the token, to it). Every file
the supervisor trusts in it is checked the same way: ours, not a link, not writable by others.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = [
    "AlreadyRunningError",
    "UnsafeRuntimeDirError",
    "check_owned_file",
    "lock_runtime_dir",
    "prepare_runtime_dir",
    "remove_sockets",
    "unlock_runtime_dir",
]

PID_FILE = "supervisor.pid"


class UnsafeRuntimeDirError(RuntimeError):
    """The runtime directory, or a file in it, cannot be trusted; the message says what to do."""


class AlreadyRunningError(RuntimeError):
    """Another live supervisor uses this runtime directory."""


def prepare_runtime_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or accept it only when it is a real directory owned by this
    user and writable by nobody else; then make it private (0700)."""
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeRuntimeDirError(
            f"runtime dir {path} cannot be used ({exc.strerror}); set ipc.runtime_dir to a "
            "directory of your own"
        ) from None
    uid = os.geteuid()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeRuntimeDirError(
            f"runtime dir {path} is a symbolic link or not a directory; remove it, or set "
            "ipc.runtime_dir to a directory of your own"
        )
    if info.st_uid != uid:
        raise UnsafeRuntimeDirError(
            f"runtime dir {path} is owned by uid {info.st_uid}, not by this user (uid {uid}): "
            "another user may have created it to read the bot's sessions. Remove it (as its "
            "owner or root), or set ipc.runtime_dir (or XDG_RUNTIME_DIR) to a private directory"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeRuntimeDirError(
            f"runtime dir {path} is writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so its files cannot be trusted; remove it and "
            "let shardline create it, or `chmod 700` it after checking what is inside"
        )
    os.chmod(path, 0o700)


def check_owned_file(path: Path) -> bool:
    """True when ``path`` exists and may be trusted (a regular file of ours that nobody else
    can write); False when it does not exist. Raises :class:`UnsafeRuntimeDirError` otherwise."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeRuntimeDirError(f"{path} is not a regular file (a link?); remove it")
    if info.st_uid != os.geteuid():
        raise UnsafeRuntimeDirError(
            f"{path} is owned by uid {info.st_uid}, not by this user: it was not written by "
            "shardline; remove it"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeRuntimeDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); remove it"
        )
    return True


def remove_sockets(*endpoints: str) -> None:
    """Unlink the socket files of ``ipc://`` endpoints once nothing listens on them."""
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            with contextlib.suppress(OSError):
                os.unlink(endpoint.removeprefix("ipc://"))


def lock_runtime_dir(path: Path) -> None:
    """Make ``path`` ours (:func:`prepare_runtime_dir`) and write the pid file that says a
    supervisor runs there. Raises AlreadyRunningError when a live process holds it."""
    lock = path / PID_FILE
    prepare_runtime_dir(path)
    if check_owned_file(lock):
        with contextlib.suppress(ValueError, OSError):
            pid = int(lock.read_text()[:32])
            if pid != os.getpid() and _alive(pid):
                raise AlreadyRunningError(
                    f"a supervisor (pid {pid}) already runs with runtime dir {path}; stop it "
                    "(`shardline stop`) or set ipc.runtime_dir"
                )
    tmp = lock.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    os.replace(tmp, lock)


def unlock_runtime_dir(path: Path, *sockets: str) -> None:
    """Remove our sockets and the pid file: nothing runs here any more."""
    remove_sockets(*sockets)
    with contextlib.suppress(OSError):
        (path / PID_FILE).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
