"""Model files: JSON configs read with errors that name the file, and writes that are all or nothing,
whenever the process is killed.

* :func:`read_json` reads a JSON object (a config, an index), or says which file is broken.

* :func:`atomic_write` writes one file through a temporary file in the same directory, then renames it
  over the target: a reader sees the old file or the new one, never a torn one.
* :func:`atomic_directory` stages a whole directory (a model: config, weights, shards, processor files)
  next to the target and swaps it in with one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux),
  so the target is always either the old complete directory or the new complete one. Two processes
  saving to the same place both succeed, the last to swap winning whole; a link to a directory is
  written through (the directory it points to is replaced, the link stays); the current directory and
  those holding it are refused (:func:`output_directory`).
* :func:`check_output_directory` checks an output directory before any work: not a file, not the
  current directory, not holding what is read, empty unless forced, and possible to make.
* :func:`directory_version` tells whether a directory was replaced while it was read, so that a reader
  can read one save whole, never files of two.

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
from collections.abc import Callable, Iterable, Iterator
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


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
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


def output_directory(path: str | os.PathLike[str]) -> Path:
    """The directory a save to ``path`` replaces: ``path`` with links followed (a link to a directory is
    written through, not replaced) and ``.`` and ``..`` resolved.

    Raises:
        ViltInputError: it is the current directory or one that holds it: a save replaces the directory
            whole, which would pull the working directory from under this process (and the shell that
            started it).
    """
    target = Path(path).resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        where = "the current directory" if target == here else f"{target}, which holds the current directory"
        raise ViltInputError(
            f"cannot write a model to {os.fspath(path)!r} ({where}): a save replaces its directory whole. "
            f"Name a new directory for it, e.g. {os.path.join(os.fspath(path), 'model')!r}"
        )
    return target


def check_holds_no_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output directory that is, or holds, one of ``inputs`` (a model directory, a checkpoint
    file): writing it would replace or delete what is being read.

    Raises:
        ViltInputError: naming the output and the input.
    """
    target = Path(output).resolve()
    for source in inputs:
        resolved = Path(source).resolve()
        if resolved == target or target in resolved.parents:
            what = "is" if resolved == target else "holds"
            raise ViltInputError(
                f"the output directory {os.fspath(output)!r} {what} the input {os.fspath(source)!r}: writing it "
                "would replace what is being read, so it is refused (--force included); choose another directory"
            )


def check_output_directory(
    path: str | os.PathLike[str],
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
    replaced: str = "the files of an earlier save",
) -> Path:
    """Refuse, before any work, an output directory that a save cannot or should not write: the current
    directory or one holding it (:func:`output_directory`); a file; a directory that is or holds one of
    ``inputs`` (:func:`check_holds_no_input`); a directory that is not empty, unless ``force``; one that
    cannot be made (the nearest existing folder above it is a file, or not writable).

    Args:
        path: the output directory.
        force: writing into a non-empty directory is allowed.
        inputs: what the save reads (a model directory, a checkpoint file).
        replaced: what a forced save replaces there, for the message.

    Returns:
        The directory a save replaces (links followed).

    Raises:
        FileExistsError: ``path`` is a file, or a non-empty directory without ``force``.
        ViltInputError: any other reason, naming it.
    """
    target = output_directory(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(
            f"{os.fspath(path)} exists and is not a directory; choose another output directory"
        )
    check_holds_no_input(path, inputs)
    if target.is_dir() and any(target.iterdir()) and not force:
        raise FileExistsError(
            f"{os.fspath(path)} already exists and is not empty; pass --force (force=True) to replace {replaced} "
            "in it (other files are kept), or choose another directory"
        )
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file" if not existing.is_dir() else "is not writable"
        raise ViltInputError(
            f"cannot make {os.fspath(path)}: {existing} {problem}; choose another output directory"
        )
    return target


def directory_version(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """An identity of the directory now at ``path`` that a swap by :func:`atomic_directory` changes
    (device, inode and change time); None when ``path`` is not a directory."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_ctime_ns) if os.path.isdir(path) else None


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], keep_old: Callable[[str], bool] = lambda name: True
) -> Iterator[Path]:
    """Stage a directory and swap it in at once, or leave ``path`` untouched if anything fails.

    Yields an empty staging directory next to ``path``. When the block ends without an exception, the
    files written get the permissions of any new file (some writers, e.g. safetensors, make them
    owner-only) and are synced to disk; the entries of the old ``path`` that were not written again, and
    for which ``keep_old(name)`` is true, are added to it (hard links, no copying), so writing behaves
    like writing into ``path``; then the staging directory takes the place of ``path`` in one atomic
    step, and the old directory is deleted. When another process swaps its own directory in meanwhile,
    this one still takes the place whole (the last swap wins).

    Args:
        path: the directory to write (created if missing, with its parents); a link to a directory is
            written through: the directory it points to is replaced and the link kept.
        keep_old: which entries of the old directory to carry over (e.g. not the weight files of an
            earlier save, which would shadow the new ones).

    Raises:
        ViltInputError: ``path`` is the current directory or holds it (:func:`output_directory`).
        FileExistsError: ``path`` is a file.
    """
    if _staged_by_this_process(Path(path)):  # inside an outer atomic_directory: that one swaps it in
        yield Path(path)
        return
    target = output_directory(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
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


_SWAP_ATTEMPTS = 100  # each lost only to another writer's swap at the same moment


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` atomically; afterwards ``staging`` holds the old directory (if any).

    A rename puts it where nothing (or an empty directory) is; where a directory is, an exchange swaps
    them. Another writer may swap its own directory in between the two (two saves to a new directory):
    then the other branch is taken, until one holds.
    """
    for _ in range(_SWAP_ATTEMPTS):
        try:
            os.rename(staging, target)
            break
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            if _exchange(staging, target):
                break
        except FileNotFoundError:  # the directory there was taken away meanwhile: rename again
            continue
        # No atomic exchange on this platform: two renames, with a moment where only the old copy exists.
        old = _temporary_name(target, _STAGING)
        try:
            os.rename(target, old)
        except FileNotFoundError:
            continue
        try:
            os.rename(staging, target)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                os.rename(old, target)  # the old directory back in its place
                raise
            shutil.rmtree(old, ignore_errors=True)  # another writer's directory took the place meanwhile
            continue
        os.rename(old, staging)
        break
    else:
        raise OSError(errno.EBUSY, f"{target} kept changing while this save swapped it in; save again")
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
