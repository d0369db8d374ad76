"""Model files: JSON configs read with errors that name the file, and writes that are all or nothing,
whenever the process is killed.

* :func:`read_json` reads a JSON object (a config, an index), or says which file is broken.

* :func:`atomic_write` writes one file through a temporary file in the same directory, then renames it
  over the target: a reader sees the old file or the new one, never a torn one.
* :func:`atomic_directory` stages a whole directory (a model: config, weights, shards, processor files)
  next to the target and swaps it in with one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux),
  so the target is always either the old complete directory or the new complete one.

Temporary files and staging directories carry the writer's process id; those of dead processes (a save
killed half-way) are removed by the next write to the same place, so nothing stale stays for long.

Writers compose: an :func:`atomic_directory` whose target is a staging directory of this same process
(a model's files and its processor's, written as one directory) writes straight into it, since the
outer swap already makes the whole all or nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ViltInputError

_STAGING = ".vilt-staging"  # .<name>.vilt-staging-<pid>-<random>: a directory being written
_TMP = ".vilt-tmp"  # .<name>.vilt-tmp-<pid>-<random>: a file being written


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ViltInputError: the file is not UTF-8 JSON, or holds something other than an object.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ViltInputError(f"{path} is not valid JSON ({err}); download or save it again") from None
    if not isinstance(data, dict):
        raise ViltInputError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporary_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale(target: Path) -> None:
    """Delete the temporary files and staging directories that dead writers left next to ``target``."""
    parent = target.parent
    if not parent.is_dir():
        return
    for kind in (_STAGING, _TMP):
        for leftover in parent.glob(f".{target.name}{kind}-*"):
            pid = leftover.name[len(f".{target.name}{kind}-") :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(True)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Write a file all or nothing: ``write(tmp)`` writes a temporary file, which then replaces ``path``.

    The file gets the permissions of any new file (some writers, e.g. safetensors, make it owner-only).
    """
    target = Path(path)
    remove_stale(target)
    tmp = _temporary_name(target, _TMP)
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], keep_old: Callable[[str], bool] = lambda name: True
) -> Iterator[Path]:
    """Stage a directory and swap it in at once, or leave ``path`` untouched if anything fails.

    Yields an empty staging directory next to ``path``. When the block ends without an exception, the
    files written get the permissions of any new file (some writers, e.g. safetensors, make them
    owner-only) and are synced to disk; the entries of the old ``path`` that were not written again, and for which ``keep_old(name)`` is true, are
    added to it (hard links, no copying), so writing behaves like writing into ``path``; then the staging
    directory takes the place of ``path`` in one atomic step, and the old directory is deleted.

    Args:
        path: the directory to write (created if missing, with its parents).
        keep_old: which entries of the old directory to carry over (e.g. not the weight files of an
            earlier save, which would shadow the new ones).
    """
    target = Path(path)
    if _staged_by_this_process(target):  # inside an outer atomic_directory: that one swaps it in
        yield target
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    remove_stale(target)
    staging = _temporary_name(target, _STAGING)
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):  # what was written gets the permissions of any new file
            if file.is_file() and not file.is_symlink():
                os.chmod(file, 0o666 & ~_umask())
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.is_dir():
            for entry in target.iterdir():
                if not (staging / entry.name).exists() and keep_old(entry.name):
                    _carry_over(entry, staging / entry.name)
        os.chmod(staging, 0o777 & ~_umask())
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the staged copy on failure, the old directory on success


def _staged_by_this_process(directory: Path) -> bool:
    """Whether ``directory`` is a staging directory that this process's :func:`atomic_directory` made."""
    name = directory.name
    return (
        name.startswith(".")
        and _STAGING in name
        and name.rsplit(_STAGING, 1)[1].startswith(f"-{os.getpid()}-")
        and directory.is_dir()
    )


def _carry_over(entry: Path, destination: Path) -> None:
    """An entry of the old directory into the staging one: hard links for files (copies across devices)."""
    if entry.is_symlink():
        os.symlink(os.readlink(entry), destination)
    elif entry.is_dir():
        shutil.copytree(entry, destination, copy_function=_link_or_copy, symlinks=True)
    else:
        _link_or_copy(str(entry), str(destination))


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` atomically; afterwards ``staging`` holds the old directory (if any)."""
    if not target.exists():
        os.rename(staging, target)
    elif not _exchange(staging, target):
        # No atomic exchange on this platform: two renames, with a moment where only the old copy exists.
        old = _temporary_name(target, _STAGING)
        os.rename(target, old)
        os.rename(staging, target)
        os.rename(old, staging)
    _fsync_directory(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # an old kernel or a file system without it
        return False
    raise OSError(error, os.strerror(error), str(b))
