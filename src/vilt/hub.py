"""Where a model's files are: the one resolver behind every ``from_pretrained`` and every ``--model``.

A model is named by

* a local directory (``./my-model``, ``/data/vilt-vqa``);
* the word ``bundled``: the easy-VQA model that ships inside the package (``./bundled`` names a
  directory called "bundled" instead);
* a Hugging Face hub id (``dandelin/vilt-b32-finetuned-vqa``), with ``revision``, ``cache_dir``,
  ``token``, ``local_files_only``, ``force_download`` and ``subfolder`` as transformers takes them.

Hub files are found through ``huggingface_hub``, in the standard cache (``HF_HOME``,
``HF_HUB_CACHE``): a model that transformers downloaded is found here, and the other way round.
``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) reads the cache only. Without a network, the hub is
tried once per process (one connection attempt of :data:`CONNECT_TIMEOUT_S` seconds, not
huggingface_hub's minute of retries): cached files are used, and an uncached one fails at once with the
command that fixes it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import ViltInputError

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_MODEL_DIR = Path(__file__).parent / "data" / "easy-vqa"
SAMPLES_DIR = Path(__file__).parent / "data" / "samples"  # sample images (their sources: README.md there)
# the keyword arguments of from_pretrained that say where files come from, as transformers names them
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "subfolder")
# transformers options that change nothing here (accepted so that drop-in calls keep working)
IGNORED_OPTIONS = (
    "trust_remote_code",
    "use_fast",
    "resume_download",
    "proxies",
    "_from_auto",
    "use_auth_token",
)
CONNECT_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def split_hub_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``from_pretrained``'s keyword arguments into (hub options, the rest).

    ``use_auth_token`` (transformers' old name) becomes ``token``; the options of
    :data:`IGNORED_OPTIONS` are dropped.
    """
    hub = {key: kwargs[key] for key in HUB_OPTIONS if key in kwargs}
    if "use_auth_token" in kwargs and "token" not in hub:
        hub["token"] = kwargs["use_auth_token"]
    rest = {key: value for key, value in kwargs.items() if key not in HUB_OPTIONS + IGNORED_OPTIONS}
    return hub, rest


def model_source(name_or_path: str | os.PathLike[str] | None) -> str:
    """The directory or hub id a model name stands for: ``bundled`` (or None) is the bundled model.

    Raises:
        FileNotFoundError: the bundled model is missing from the installation.
    """
    if name_or_path is None or (isinstance(name_or_path, str) and name_or_path == BUNDLED):
        if not (BUNDLED_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the bundled easy-VQA model is missing from {BUNDLED_MODEL_DIR}; reinstall vilt"
            )
        return str(BUNDLED_MODEL_DIR)
    return os.fspath(name_or_path)


def is_offline(local_files_only: bool = False) -> bool:
    """Whether only the cache may be read: ``local_files_only`` or ``HF_HUB_OFFLINE`` set."""
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub endpoint opens within :data:`CONNECT_TIMEOUT_S` (once per process)."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def resolve_file(
    name_or_path: str | os.PathLike[str] | None,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    subfolder: str | None = None,
    required: bool = True,
) -> str | None:
    """The local path of ``filename`` of a model (a directory, ``bundled`` or a hub id).

    Args:
        name_or_path: the model, see the module docstring.
        filename: a plain file name inside the model (no directories, no ``..``).
        revision, cache_dir, local_files_only, token, force_download, subfolder: the hub options.
        required: raise when the file does not exist (else return None).

    Raises:
        FileNotFoundError: the directory, repository or (when required) file does not exist.
        OSError: the hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the file is not cached, or
            (even when not required) nothing of that revision is cached; the message says how to fix it.
        ViltInputError: ``filename`` is not a plain file name.
    """
    _check_filename(filename)
    source = model_source(name_or_path)
    path = Path(source)
    if path.is_dir():
        directory = path / subfolder if subfolder else path
        candidate = directory / filename
        if candidate.is_file():
            return str(candidate)
        if required:
            present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            raise FileNotFoundError(
                f"{candidate} does not exist (the directory holds: {', '.join(present) or 'nothing'})"
            )
        return None
    if not is_hub_id(source):
        raise FileNotFoundError(
            f"{source!r} is neither a local directory nor a Hugging Face hub id (like 'dandelin/vilt-b32-mlm')"
        )
    options = {
        "revision": revision,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "token": token,
        "force_download": force_download,
        "subfolder": subfolder,
    }
    return _hub_file(source, filename, options, is_offline(local_files_only), required)


def is_hub_id(source: str) -> bool:
    """Whether ``source`` (not ``bundled``) can only be a hub id: no such path, and a name like ``org/name``."""
    return not Path(source).exists() and bool(_HUB_ID.match(source)) and not source.startswith((".", "/"))


def _check_filename(filename: str) -> None:
    if not is_plain_file_name(filename):
        raise ViltInputError(f"{filename!r} is not a plain file name inside a model directory")


def is_plain_file_name(name: object) -> bool:
    """Whether ``name`` names a file directly inside a directory: no separator, no ``..``, not absolute."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def containing_root(directory: str | os.PathLike[str]) -> Path:
    """The directory whose inside a model's files must resolve to.

    It is the model directory itself, except in a Hugging Face hub cache, whose snapshot files are links
    into the repository's ``blobs/``: there it is the repository's folder (``models--OWNER--NAME``), for
    a hub id as for a snapshot directory given as a path.
    """
    directory = Path(directory).absolute()
    for folder in (directory, *directory.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return folder.parent.parent
    return directory


def check_inside(
    file: str | os.PathLike[str], directory: str | os.PathLike[str], named_in: str | None = None
) -> None:
    """Raise unless ``file``, symlinks followed, lies inside :func:`containing_root` of ``directory``.

    Raises:
        ViltInputError: the file resolves outside (``named_in`` is the file that named it, for the
            message; None for a file the model directory holds under a fixed name).
    """
    root = containing_root(directory).resolve()
    target = Path(file).resolve()
    if not target.is_relative_to(root):
        named = f"{named_in} names {Path(file).name!r}" if named_in else f"{os.fspath(file)} is a link"
        raise ViltInputError(
            f"{named}, which resolves to {target}, outside the model directory {root}; a model's files must "
            "stay inside its directory. Refusing to read it"
        )


def _hub_file(
    repo_id: str, filename: str, options: dict[str, Any], offline: bool, required: bool
) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    unreachable = not offline and not hub_reachable(_endpoint())
    if unreachable:
        logger.info("the hub (%s) cannot be reached; reading %s from the cache", _endpoint(), repo_id)
    if offline or unreachable:
        return _cached_file(repo_id, filename, options, offline, required)
    try:
        return hf_hub_download(repo_id, filename, **options)
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
        return _cached_file(repo_id, filename, options, offline, required)  # the connection failed meanwhile
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(f"the hub repository {repo_id!r} has no file {filename!r}") from None
        return None
    except RevisionNotFoundError:
        raise FileNotFoundError(
            f"the hub repository {repo_id!r} has no revision {options['revision'] or 'main'!r}; pass a branch, "
            "tag or commit it has (revision=None is its main branch)"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as err:
        revision = options["revision"] or "main"
        raise FileNotFoundError(
            f"the hub repository {repo_id!r} (revision {revision}) was not found or is not accessible "
            f"({type(err).__name__}); check the name, or log in with `hf auth login` for a private or gated one"
        ) from None


def _cached_file(
    repo_id: str, filename: str, options: dict[str, Any], offline: bool, required: bool
) -> str | None:
    """``filename`` of ``repo_id`` from the cache alone, with no request at all (``hf_hub_download`` with
    ``local_files_only`` may still ask the endpoint for its user-agent registry, a second wait when the hub
    cannot be reached); None when it is not required and its revision is cached without it.

    Raises:
        OSError: not in the cache; the message says how to fix it.
    """
    from huggingface_hub import try_to_load_from_cache

    name = f"{options['subfolder']}/{filename}" if options["subfolder"] else filename
    found = try_to_load_from_cache(repo_id, name, cache_dir=options["cache_dir"], revision=options["revision"])
    if isinstance(found, str):
        return found
    if not required and _revision_cached(repo_id, options["revision"], options["cache_dir"]):
        return None  # the revision is in the cache without this optional file
    raise _not_cached(repo_id, filename, offline, options["cache_dir"], options["revision"])


def _revision_cached(repo_id: str, revision: str | None, cache_dir: str | None) -> bool:
    """Whether a snapshot of ``revision`` (a branch, tag or commit) of ``repo_id`` is in the cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / (revision or constants.DEFAULT_REVISION)
    commit = ref.read_text().strip() if ref.is_file() else revision
    return commit is not None and (storage / "snapshots" / commit).is_dir()


def _not_cached(
    repo_id: str, filename: str, offline: bool, cache_dir: str | None, revision: str | None
) -> OSError:
    from huggingface_hub import constants

    why = (
        "HF_HUB_OFFLINE is set or local_files_only=True"
        if offline
        else f"the Hugging Face Hub ({_endpoint()}) cannot be reached"
    )
    at = "" if revision is None else f" at revision {revision!r}"
    command = f"hf download {repo_id}" + ("" if revision is None else f" --revision {revision}")
    return OSError(
        f"cannot load {filename!r} of {repo_id!r}{at}: {why} and it is not in the cache ({cache_dir or constants.HF_HUB_CACHE}). "
        f"Fix: on a machine with internet run `{command}` and copy its cache here (or set "
        "HF_HUB_CACHE to it), or pass a local directory holding the model"
    )
