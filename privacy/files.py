"""The files the gateway writes hold personal data or secrets (audit records, spilled and dead-lettered
records, keys, the policy history): each is readable by its owner only (0600), in a directory only its
owner can enter (0700), whatever the process's umask. Modes are set explicitly after creation, because
a umask can only take bits away from the mode `open` and `mkdir` are given.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700

log = structlog.get_logger("wardgate.files")


def private_directory(path: Path) -> Path:
    """`path` as a directory of the gateway's own: created if missing, narrowed to 0700 if it is wider.
    A directory the gateway may write to but does not own (a volume mounted for it, group-writable) is
    left as it is, with a warning: the files in it are 0600 all the same."""
    path.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != PRIVATE_DIRECTORY:
        try:
            path.chmod(PRIVATE_DIRECTORY)
        except PermissionError:
            log.warning("state_directory_not_private", directory=str(path), mode=oct(path.stat().st_mode & 0o777))
    return path


def open_private(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_CREAT)`, the file made 0600: created so, or narrowed to it if it existed."""
    descriptor = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def private_sqlite(path: Path) -> None:
    """A SQLite database made private before SQLite opens it: created empty with 0600 if missing (SQLite
    gives its -wal and -shm files the database's mode), and narrowed to 0600 with those files if it
    exists. An existing database is only ever chmod-ed, never opened here: closing any descriptor of a
    database file drops the POSIX locks every SQLite connection of this process holds on it. Another
    user's database (a CLI that can only read it) is left as it is."""
    path.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(open_private(path, os.O_WRONLY | os.O_EXCL))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            file.chmod(PRIVATE_FILE)


def write_once(path: Path, data: bytes) -> bool:
    """Write `path` with `data`, fsynced, unless it exists: False then, and the file is left as it is.
    Written under a temporary name and linked into place, so that a crash never leaves `path` half
    written (a reader that finds it finds all of it)."""
    path.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}.new")
    descriptor = open_private(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        fsync_directory(path.parent)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def fsync_directory(path: Path) -> None:
    """Make a file's creation or renaming in `path` durable, as fsync makes its content."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
