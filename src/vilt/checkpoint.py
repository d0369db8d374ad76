"""Checkpoint I/O: find, read, check and write ViLT weights in the reference's layout.

Reads a local directory or a Hugging Face hub id (through ``huggingface_hub``, which respects
``HF_HUB_OFFLINE`` and the cache) holding ``config.json`` plus ``model.safetensors``,
``pytorch_model.bin`` or a sharded ``*.index.json``. ``.bin`` files are read with
``torch.load(weights_only=True)``, so a pickle that would run code is refused, never executed
(:func:`read_torch_file`). Before anything large is allocated or any weight file opened, the config is
checked (:meth:`ViltConfig.validate`: types, ranges, memory) and a shard index may only name plain
files inside the model directory, as the weight file itself must be, links followed
(:func:`find_weight_files`). Tensors are mapped from their files, not read (:class:`Weights`): only
those the model takes are read, and those are refused by name when holding NaN or infinity
(:func:`check_weights`), or when integers stand where the model has a floating-point weight. A directory
that a save replaces while it is read is read again, so a load sees one save whole (:func:`_read_one_save`).
Keys are adapted between layouts (v4/v5 MLM bias, base/head prefixes) and every missing, unexpected or
wrong-shaped tensor is reported (:func:`load_into`), as transformers reports them: a tensor under a name
the model does not have is unexpected whatever its dtype.

Writes ``config.json`` + ``model.safetensors`` (sharded above ``max_shard_size``), which
``transformers`` loads unchanged, all at once (:func:`vilt.files.atomic_directory`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import ViltConfig
from .devices import parse_dtype
from .errors import ViltInputError
from .files import atomic_directory, directory_version, read_json
from .hub import (
    BUNDLED,
    check_inside,
    is_offline,
    is_plain_file_name,
    model_source,
    resolve_file,
    split_hub_options,
)

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# checked in this order: safetensors first
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
_SHARD_NAME = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")

# keys some checkpoints carry that are buffers (not weights) here
_IGNORED_KEYS = re.compile(r"(^|\.)embeddings\.text_embeddings\.(position_ids|token_type_ids)$")


# ----------------------------------------------------------------------------- locating files


def find_weight_files(path_or_repo_id: str | os.PathLike[str] | None, **hub: Any) -> list[str]:
    """The weight files of a checkpoint: one file, or every shard named in an index.

    Files are checked before any is opened: the weight file or index, and each shard, a plain file name
    of the index's kind, must, links followed, stay inside the model directory
    (:func:`vilt.hub.check_inside`).

    Raises:
        FileNotFoundError: no weight file exists.
        ViltInputError: the index is malformed or names a shard outside the model directory.
    """
    for name in WEIGHT_FILES:
        found = resolve_file(path_or_repo_id, name, required=False, **hub)
        if found is None:
            continue
        check_inside(found, Path(found).parent)
        if not name.endswith(".index.json"):
            return [found]
        shards = _shard_names(found, name.removesuffix(".index.json").rsplit(".", 1)[-1])
        files = [resolve_file(path_or_repo_id, shard, **hub) for shard in shards]
        for file in files:
            check_inside(file, Path(found).parent, named_in=found)  # type: ignore[arg-type]
        return files  # type: ignore[return-value]
    offline = not Path(model_source(path_or_repo_id)).is_dir() and is_offline(
        hub.get("local_files_only", False)
    )
    where = " in the local cache (HF_HUB_OFFLINE or local_files_only is set)" if offline else ""
    raise FileNotFoundError(
        f"no weights found at {path_or_repo_id}{where}: expected one of {', '.join(WEIGHT_FILES)}"
    )


def _shard_names(index_file: str, extension: str) -> list[str]:
    """The shard file names an index's ``weight_map`` names, each a plain ``*.{extension}`` file name."""
    weight_map = read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ViltInputError(f'{index_file} has no "weight_map" of tensor names to shard files')
    shards = sorted(set(weight_map.values()), key=str)
    for shard in shards:
        if not is_plain_file_name(shard) or not shard.endswith(f".{extension}"):
            raise ViltInputError(
                f"{index_file} names the shard {shard!r}: shards must be plain *.{extension} file names "
                "inside the model directory (no directories, no '..', no absolute paths). Refusing to read it"
            )
    return shards


# ----------------------------------------------------------------------------- reading tensors


# modules whose classes a training checkpoint may pickle next to its weights (hyper-parameters,
# callback states); they are replaced by inert stand-ins, never imported or called
_BOOKKEEPING_GLOBALS = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",
    "sacred.",
    "argparse.Namespace",
)


class _Inert:
    """Stands in for a bookkeeping class named in a checkpoint's pickle: keeps what it is given, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _refusal(file: str, reason: str) -> ValueError:
    return ValueError(
        f"refusing to load {file}: its pickle refers to {reason}, which is code, not tensors; vilt reads "
        "tensors only (torch.load(weights_only=True)) so that no file can run code. If you trust the file, "
        "re-save its tensors in a trusted environment (torch.save(torch.load(FILE, weights_only=False)"
        "['state_dict'], 'clean.bin'), or as safetensors) and load that instead"
    )


def _reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0])


def _stand_ins(file: str, err: pickle.UnpicklingError) -> list[Any]:
    """Inert replacements for the non-tensor globals of a ``torch.save`` file that ``err`` refused.

    Raises:
        ValueError: the file names a global that is not training bookkeeping (e.g. ``os.system``).
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except (ValueError, RuntimeError):  # not a zip checkpoint: nothing to inspect statically
        names = []
    foreign = [name for name in names if not name.startswith(_BOOKKEEPING_GLOBALS)]
    if foreign or not names:
        raise _refusal(file, ", ".join(foreign) or _reason(err))
    return [
        (dict if name.endswith("Dict") else type(name.rsplit(".", 1)[-1], (_Inert,), {}), name)
        for name in names
    ]


def _torch_load(file: str, stand_ins: list[Any]) -> Any:
    # a zip archive (what torch.save writes) is mapped, not read: a tensor's bytes are read when used
    mapped = zipfile.is_zipfile(file)
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except FileNotFoundError:
        raise
    except (EOFError, RuntimeError, OSError) as err:
        raise ValueError(
            f"{file} is not a readable PyTorch checkpoint ({err}); it may be truncated"
        ) from None


def read_torch_file(file: str | os.PathLike[str]) -> Any:
    """Unpickle a ``torch.save`` file with ``weights_only=True``: tensors and plain containers only.

    Training bookkeeping that Lightning checkpoints carry (hyper-parameter dicts, callback states) is
    read into inert stand-ins; any other code reference makes the load fail, unexecuted.

    Raises:
        ValueError: the pickle refers to code, or the file is truncated or not a PyTorch file.
    """
    file = str(file)
    try:
        return _torch_load(file, [])
    except pickle.UnpicklingError as err:
        stand_ins = _stand_ins(file, err)
    try:
        return _torch_load(file, stand_ins)
    except pickle.UnpicklingError as err:  # the pickle builds a stand-in in a way it cannot be
        raise _refusal(file, _reason(err)) from None


class Weights(Mapping[str, torch.Tensor]):
    """The tensors of a checkpoint's weight files by name: every file opened at once, each tensor made
    when first asked for, mapped from its file, and read only when used (copied into a model, checked).

    Tensors a model does not take cost nothing: a safetensors file's are never made, and those of a
    ``.bin`` that ``torch.save`` wrote as a zip archive (as it has since PyTorch 1.6) are never read.
    The files stay open (mapped) while this object lives, so a save that replaces them meanwhile changes
    nothing here. A ``.bin`` may also be a training checkpoint with the weights under ``"state_dict"``.

    Raises:
        FileNotFoundError: a file does not exist (any more).
        ValueError: a file is not a readable checkpoint of tensors (or its pickle refers to code).
    """

    def __init__(self, files: Iterable[str | os.PathLike[str]] = ()) -> None:
        # name -> (where it is: a safetensors file's handle or a dict of tensors, its name there)
        self._where: dict[str, tuple[Any, str]] = {}
        for file in files:
            source = _open_weights(str(file))
            self._where.update((key, (source, key)) for key in source.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        source, name = self._where[key]
        return source[name] if isinstance(source, dict) else source.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def renamed(self, names: dict[str, str]) -> Weights:
        """These tensors under new names ({new name: name here}), none of them made."""
        view = Weights()
        view._where = {new: self._where[old] for new, old in names.items()}
        return view


def _open_weights(file: str) -> Any:
    """A safetensors file's handle, or a ``.bin`` file's dict of tensors (mapped when it can be)."""
    if file.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(file, framework="pt")
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            if not os.path.exists(file):  # gone meanwhile (safetensors says so in its own words)
                raise FileNotFoundError(errno.ENOENT, "no such file", file) from None
            raise ValueError(
                f"{file} is not a readable safetensors file ({err}); it may be truncated or corrupt: download it again"
            ) from None
    state = read_torch_file(file)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file} does not hold a state dict of tensors")
    return state


def load_weights(files: Iterable[str]) -> Weights:
    """The tensors of all shards, made and read only when used (:class:`Weights`)."""
    return Weights(files)


def check_weights(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse floating-point tensors that hold NaN or infinity (tensors of other dtypes are checked against
    the model's weights when loaded, :func:`load_into`).

    One summation per tensor finds any NaN or infinity (they propagate through a sum); only a sum that
    overflows on finite values, which takes weights near the dtype's limit, is checked element by
    element.

    Raises:
        ViltInputError: naming ``source`` and the tensor.
    """
    for key, tensor in state.items():
        if tensor.is_floating_point() and not _finite(tensor):
            raise ViltInputError(
                f"{source}: tensor {key!r} holds NaN or infinite values; the checkpoint is corrupt (or was "
                "saved from a diverged training run): use another one"
            )


def _check_dtypes(usable: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a tensor of the checkpoint that fills a floating-point weight of the model but is not floating point.

    Raises:
        ViltInputError: naming ``source`` and the tensor.
    """
    for key, tensor in usable.items():
        if expected[key].is_floating_point() and not tensor.is_floating_point():
            raise ViltInputError(
                f"{source}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}, but ViLT weights are "
                "floating point; the file is corrupt or not a ViLT checkpoint"
            )


def _finite(tensor: torch.Tensor) -> bool:
    accumulate = torch.float32 if tensor.element_size() < 4 else tensor.dtype
    try:
        if bool(torch.isfinite(tensor.sum(dtype=accumulate))):
            return True
        return bool(torch.isfinite(tensor).all())  # NaN or inf, or finite values whose sum overflowed
    except RuntimeError:  # a dtype without these kernels (float8)
        return bool(torch.isfinite(tensor.float()).all())


# ----------------------------------------------------------------------------- matching keys


@dataclass
class LoadingInfo:
    """What happened to each key when a state dict was loaded."""

    missing_keys: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected_keys: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    # (key, shape in the checkpoint, shape in the model)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``output_loading_info=True`` dict, as transformers v5 gives it: sets of keys, and ``error_msgs``."""
        return {
            "missing_keys": set(self.missing_keys),
            "unexpected_keys": set(self.unexpected_keys),
            "mismatched_keys": set(self.mismatched_keys),
            "error_msgs": [],
        }


def adapt_keys(state: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping[str, torch.Tensor]:
    """Rename checkpoint keys to this model's names (the tensors are not touched: :class:`Weights` stay
    unread).

    * drops the text embedding buffers some checkpoints carry (``position_ids``);
    * maps the v4 MLM bias ``mlm_score.bias`` to ``mlm_score.decoder.bias`` (hf-vilt.md §2.4);
    * adds or strips the ``vilt.`` prefix between base-model and head-model checkpoints (a head
      checkpoint's head keys stay as they are, so loading it into the base model reports them unused).
    """
    names = {k: k for k in state if not _IGNORED_KEYS.search(k)}  # new name -> name in the checkpoint
    if "mlm_score.bias" in names:
        names.setdefault("mlm_score.decoder.bias", names.pop("mlm_score.bias"))
    prefix = getattr(model, "base_model_prefix", "vilt") + "."
    model_keys = model.state_dict().keys()
    model_is_head = any(k.startswith(prefix) for k in model_keys)
    ckpt_is_head = any(k.startswith(prefix) for k in names)
    if model_is_head and not ckpt_is_head:  # base checkpoint into a head model (other keys keep their names)
        names = {(prefix + k if prefix + k in model_keys else k): v for k, v in names.items()}
    elif ckpt_is_head and not model_is_head:  # head checkpoint into the base model: the head is unused
        names = {k.removeprefix(prefix): v for k, v in names.items()}
    if isinstance(state, Weights):
        return state.renamed(names)
    return {new: state[old] for new, old in names.items()}


def _sort_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[LoadingInfo, dict[str, torch.Tensor]]:
    """Which tensors of an (adapted) checkpoint ``model`` can take, and which keys are missing,
    unexpected or of the wrong shape (only the tensors of the model's keys are made)."""
    expected = model.state_dict()
    info = LoadingInfo()
    usable: dict[str, torch.Tensor] = {}
    for key in state:
        if key not in expected:
            info.unexpected_keys.append(key)
            continue
        tensor = state[key]
        if tuple(tensor.shape) != tuple(expected[key].shape):
            info.mismatched_keys.append((key, tuple(tensor.shape), tuple(expected[key].shape)))
        else:
            usable[key] = tensor
    tied = _tied_keys(model)
    info.missing_keys = [k for k in expected if k not in usable and k not in tied]
    return info, usable


def load_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    ignore_mismatched_sizes: bool = False,
    source: str = "checkpoint",
) -> LoadingInfo:
    """Copy ``state`` into ``model``; report missing, unexpected and wrong-shaped keys.

    Args:
        model: the freshly built model to fill.
        state: the checkpoint's tensors, in any layout :func:`adapt_keys` understands.
        ignore_mismatched_sizes: leave wrong-shaped tensors freshly initialised instead of raising.
        source: the file the tensors come from, named in errors.

    Raises:
        ValueError: a tensor has the wrong shape and ``ignore_mismatched_sizes`` is False.
        ViltInputError: a tensor the model takes is not floating point or not finite
            (:func:`check_weights`); tensors it does not take are not read.
    """
    state = adapt_keys(state, model)
    _untie_if_checkpoint_differs(model, state)
    info, usable = _sort_keys(model, state)
    _check_dtypes(usable, model.state_dict(), source)
    check_weights(usable, source)  # only what the model takes is read
    if info.mismatched_keys and not ignore_mismatched_sizes:
        shapes = "; ".join(
            f"tensor {key!r} has shape {got}, the model {want}" for key, got, want in info.mismatched_keys
        )
        raise ValueError(
            f"{source}: {shapes}. If you are re-heading the model (for example a new answer vocabulary), pass "
            "ignore_mismatched_sizes=True and the new num_labels"
        )
    model.load_state_dict(usable, strict=False)
    return info


def _tied_keys(model: nn.Module) -> set[str]:
    """Keys that share storage with an earlier key (saved once, restored by tying)."""
    seen: set[int] = set()
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return tied


def _untie_if_checkpoint_differs(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Keep a checkpoint's own MLM decoder: never tie it to the word embeddings when they differ."""
    decoder = state.get("mlm_score.decoder.weight")
    words = state.get("vilt.embeddings.text_embeddings.word_embeddings.weight")
    head: Any = getattr(model, "mlm_score", None)
    config: Any = getattr(model, "config", None)
    if decoder is None or words is None or head is None or not config.tie_word_embeddings:
        return
    if decoder.shape != words.shape or not torch.equal(decoder, words):
        head.decoder.weight = nn.Parameter(head.decoder.weight.detach().clone())
        config.tie_word_embeddings = False
        logger.info("the checkpoint's MLM decoder differs from its word embeddings: keeping them untied")


def _foreign_heads(keys: Iterable[str], model: nn.Module) -> list[str]:
    """The keys that belong to a module this model does not have at all (another task's head)."""
    children = set(dict(model.named_children()))
    return [key for key in keys if key.split(".", 1)[0] not in children]


def _report(info: LoadingInfo, model: nn.Module, source: str) -> None:
    """Log what did not load: new weights and unusable tensors warn; other tasks' heads are expected."""
    name = type(model).__name__
    if info.missing_keys:
        logger.warning(
            "Some weights of %s were not initialized from %s and are newly initialized: %s. "
            "Train the model on a downstream task before using it for predictions.",
            name,
            source,
            info.missing_keys,
        )
    dropped = _foreign_heads(info.unexpected_keys, model)
    foreign = set(dropped)  # a set: a checkpoint may hold hundreds of thousands of keys
    unused = [k for k in info.unexpected_keys if k not in foreign]
    if dropped:
        logger.info("%s has heads that %s does not use, dropped: %s", source, name, dropped)
    if unused:
        logger.warning("Some weights of %s were not used by %s: %s", source, name, unused)
    for key, got, want in info.mismatched_keys:
        logger.warning(
            "%s: %s has shape %s in the checkpoint, %s in the model: newly initialized",
            source,
            key,
            got,
            want,
        )


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init`` draw nothing while a model is built (process-wide, as transformers does)."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _build(cls: type[Any], config: ViltConfig, state: Mapping[str, torch.Tensor]) -> Any:
    """``cls(config)``, without drawing random weights when ``state`` fills every one of them.

    Random initialisation is most of the time of loading a checkpoint; when the checkpoint turns out
    not to cover the model (a new head, a re-headed classifier), the model is built again as usual.
    """
    with _skip_weight_init():
        model = cls(config)
    adapted = adapt_keys(state, model)
    _untie_if_checkpoint_differs(model, adapted)
    info, _ = _sort_keys(model, adapted)
    return cls(config) if info.missing_keys or info.mismatched_keys else model


def _as_dtype(torch_dtype: str | torch.dtype | None, config: ViltConfig) -> torch.dtype | None:
    """The dtype ``from_pretrained`` casts to: None keeps the weights', "auto" is the config's ``torch_dtype``."""
    if torch_dtype == "auto":
        return config.dtype or torch.float32
    return None if torch_dtype is None else parse_dtype(torch_dtype)


def read_config(file: str | os.PathLike[str]) -> ViltConfig:
    """Read a ``config.json``; errors (:class:`ViltInputError`) name the file."""
    try:
        return ViltConfig.from_json_file(file)
    except ValueError as err:
        if str(file) in str(err):
            raise
        raise ViltInputError(f"{file}: {err}") from None


_READ_ATTEMPTS = 10  # reads of a directory that saves keep replacing, before giving up


def _read_one_save(
    path_or_repo_id: str | os.PathLike[str] | None, config: ViltConfig | None, hub: dict[str, Any]
) -> tuple[ViltConfig, list[str], Weights]:
    """The config, the weight files and their tensors (mapped, not read) of one save of a model.

    A save replaces a model directory whole (:func:`vilt.files.atomic_directory`), so a directory that
    is replaced while it is read is read again: the files then all come from the new save, never some
    from each, and a file of the old save that vanished is no error.
    """
    local = Path(model_source(path_or_repo_id), hub.get("subfolder") or "")
    for attempt in range(_READ_ATTEMPTS):
        version = directory_version(local)
        try:
            found = config or read_config(resolve_file(path_or_repo_id, "config.json", **hub))  # type: ignore[arg-type]
            files = find_weight_files(path_or_repo_id, **hub)
            state = load_weights(files)
        except FileNotFoundError:
            if version is None or directory_version(local) == version:
                raise
            continue  # the directory was replaced by a save meanwhile
        if directory_version(local) == version:
            return found, files, state
        logger.info("%s was saved again while it was read; reading it again (%d)", local, attempt + 1)
    raise OSError(
        f"{local} was saved again {_READ_ATTEMPTS} times while it was read; load it when it is not being written"
    )


def load_pretrained(
    cls: type[Any],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *,
    config: ViltConfig | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    ignore_mismatched_sizes: bool = False,
    output_loading_info: bool = False,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> Any:
    """Build ``cls`` from a checkpoint directory, ``bundled`` or a hub id (the body of ``from_pretrained``).

    Args:
        cls: the model class to build.
        pretrained_model_name_or_path: a local directory, ``bundled`` or a hub id (see :mod:`vilt.hub`);
            None with ``state_dict`` (and ``config``) to load tensors in memory, None alone for ``bundled``.
        config: use this config instead of the checkpoint's ``config.json``.
        state_dict: the tensors to load, instead of a checkpoint's files (pass ``config`` too).
        torch_dtype: dtype of the returned weights ("auto" uses the config's ``torch_dtype``);
            ``dtype`` is the transformers v5 name of the same option.
        device: device to move the model to.
        ignore_mismatched_sizes: re-initialise tensors whose shape differs (e.g. a new answer head).
        output_loading_info: also return a dict of the missing, unexpected and mismatched keys (sets, as
            transformers v5 gives them) and ``error_msgs``.
        attn_implementation: "sdpa" or "eager" (stored in the config).
        **kwargs: the hub options (``revision``, ``cache_dir``, ``local_files_only``, ``token``...,
            see :data:`vilt.hub.HUB_OPTIONS`), and config fields to change, e.g. ``num_labels=13``.

    Raises:
        ValueError: ``state_dict`` was passed with a model name, or without a config.
        RuntimeError: called under ``with torch.device("meta")``, where no weight could be loaded.
    """
    if torch.get_default_device().type == "meta":
        raise RuntimeError(
            "You are using `from_pretrained` with a meta device context manager or torch.set_default_device('meta'): "
            "the model would be built without its weights. Load it outside the context, then move it"
        )
    hub, config_overrides = split_hub_options(kwargs)
    if state_dict is not None:
        if pretrained_model_name_or_path is not None:
            raise ValueError(
                "state_dict cannot be passed together with a model name: pass pretrained_model_name_or_path=None "
                "to load the state_dict, or leave state_dict out to load the model's files"
            )
        if config is None:
            raise ValueError(
                "from_pretrained(None, state_dict=...) needs config=: the tensors do not say the model's sizes"
            )
    state: Mapping[str, torch.Tensor]
    if state_dict is not None:
        source = "the state_dict argument"
        state = dict(state_dict)
    else:
        read_config_here = config is None
        config, files, state = _read_one_save(pretrained_model_name_or_path, config, hub)
        if read_config_here:
            config.name_or_path = os.fspath(pretrained_model_name_or_path or BUNDLED)
        source = files[0] if len(files) == 1 else f"{Path(files[0]).parent} ({len(files)} shards)"
    assert config is not None  # read from the files, or required with state_dict above
    if config_overrides:
        config = config.replace(**config_overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = _build(cls, config, state)
    info = load_into(model, state, ignore_mismatched_sizes, source=source)
    _report(info, model, source)
    target = _as_dtype(dtype if torch_dtype is None else torch_dtype, config)
    if target is not None:
        model.to(dtype=target)
    if device is not None:
        model.to(device=device)
    model.eval()
    if output_loading_info:
        return model, info.to_dict()
    return model


# ----------------------------------------------------------------------------- writing


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size must be bytes or a size like '5GB' or '200MB', got {size!r}")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(number * scale)


def _shards(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Split ``state`` in key order into groups of at most ``limit`` bytes (a bigger tensor gets its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _write_safetensors(state: dict[str, torch.Tensor], directory: Path, limit: int) -> None:
    """``model.safetensors``, or numbered shards plus an index above ``limit`` bytes."""
    from safetensors.torch import save_file

    shards = _shards(state, limit)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(state, directory / SAFE_WEIGHTS_NAME, metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is a weight file of some save (single, sharded or index): a new save replaces
    them all, since an earlier save's files would shadow or mix with its own."""
    return name in WEIGHT_FILES or bool(_SHARD_NAME.fullmatch(name))


def save_state_dict(
    state: dict[str, torch.Tensor],
    config: ViltConfig,
    save_directory: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
) -> None:
    """Write ``config.json`` and ``state`` in the reference layout.

    Args:
        state: the tensors to write, under their final names (tied copies already removed).
        config: written as ``config.json`` with the weights' ``torch_dtype``.
        save_directory: created if needed; weight files of an earlier save there are replaced, other
            files are kept. The directory changes all at once: killed at any moment, it holds either
            the earlier save or this one (:func:`vilt.files.atomic_directory`).
        max_shard_size: split the weights into ``model-0000i-of-0000n.safetensors`` files plus an
            index when they are larger than this (bytes, or a size like ``"200MB"``).
        safe_serialization: safetensors (default) or a ``pytorch_model.bin``.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    config.dtype = (
        floating[0] if floating else torch.float32
    )  # written as torch_dtype, which both versions read
    limit = _parse_size(max_shard_size)
    with atomic_directory(save_directory, keep_old=lambda name: not is_weight_file(name)) as staging:
        config.to_json_file(staging / "config.json")
        if safe_serialization:
            _write_safetensors(state, staging, limit)
        else:
            torch.save(state, staging / WEIGHTS_NAME)


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
) -> None:
    """Write ``model``'s ``config.json`` and weights in the reference layout (tied weights saved once).

    Args:
        model: a ViLT model (anything with a ``config``).
        save_directory: created if needed.
        state_dict: the tensors to write instead of ``model.state_dict()`` (transformers' ``Trainer``
            passes the one it gathered).
        is_main_process: write only when True (in a distributed run, the process that saves).
        max_shard_size, safe_serialization: see :func:`save_state_dict`.
    """
    if not is_main_process:
        return
    config: ViltConfig = model.config  # type: ignore[assignment]
    config.architectures = [type(model).__name__]
    tied = _tied_keys(model)
    state = {
        k: v for k, v in (model.state_dict() if state_dict is None else state_dict).items() if k not in tied
    }
    save_state_dict(
        state, config, save_directory, max_shard_size=max_shard_size, safe_serialization=safe_serialization
    )
