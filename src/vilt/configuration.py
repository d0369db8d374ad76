"""ViltConfig: the hyper-parameters of a ViLT model, compatible with the reference ``config.json``.

Field names, defaults and meaning follow ``transformers.ViltConfig`` exactly, so a reference
``config.json`` loads here and the ``config.json`` written here loads in ``transformers`` to an
equal config. As in transformers, keys this class does not know are kept as attributes (listed in
``extra``) and written back unchanged, ``num_labels`` follows ``id2label``, and the checks that only
concern a model (heads dividing the hidden size) run when a model is built.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import ViltInputError
from .files import atomic_write, read_json
from .hub import resolve_file, split_hub_options

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
# count field -> smallest value
_COUNTS = {
    "vocab_size": 1,
    "type_vocab_size": 1,
    "max_position_embeddings": 1,
    "image_size": 1,
    "patch_size": 1,
    "num_channels": 1,
    "modality_type_vocab_size": 2,  # text and image
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
}
# float field -> (lowest, highest)
_FLOATS = {
    "hidden_dropout_prob": (0.0, 1.0),
    "attention_probs_dropout_prob": (0.0, 1.0),
    "initializer_range": (0.0, 10.0),
    "layer_norm_eps": (0.0, 1.0),  # and above 0
}
_FLAGS = ("qkv_bias", "tie_word_embeddings", "output_attentions", "output_hidden_states", "return_dict")
_ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
# the settings every transformers config has, at their defaults: config.json leaves them out (to_diff_dict)
_COMMON_DEFAULTS: dict[str, Any] = {
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "problem_type": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
}
# transformers' bookkeeping keys that describe a loading, not the model: read and dropped
_NOT_KEPT = (
    "_commit_hash",
    "_attn_implementation_internal",
    "_experts_implementation_internal",
    "experts_implementation",
)


@dataclass(init=False, eq=False, repr=False)
class ViltConfig:
    """Configuration of a ViLT model and its heads (same fields and defaults as the reference).

    Built as transformers builds its configs: keyword arguments only; every keyword the class does not
    know (``is_decoder``, ``use_cache``, a key of some other tool) is kept as an attribute, listed in
    :attr:`extra`, and saved with the config. ``num_labels`` is the length of ``id2label``; setting it
    rebuilds ``id2label`` and ``label2id``. ``dtype`` (``torch_dtype``) is a ``torch.dtype`` or None.

    Raises:
        ViltInputError: (a ValueError) when a field has an impossible type or value, or the model would not
            fit in this machine's memory (see :meth:`validate`). Whether ``hidden_size`` splits evenly into
            ``num_attention_heads`` is checked when a model is built (:meth:`validate_for_model`), as the
            reference checks it, so a config can be edited in between.
    """

    # --- text ---
    vocab_size: int = 30522  # WordPiece vocabulary size (word embeddings and MLM decoder)
    type_vocab_size: int = 2  # BERT segment ids of the text (token_type_ids)
    max_position_embeddings: int = 40  # longest text, in tokens, the model can read
    pad_token_id: int | None = None  # padding_idx of the word embeddings (init and gradients only)
    # --- image ---
    image_size: int = 384  # side of the square grid the patch position embeddings were trained on
    patch_size: int = 32  # side of one square image patch, in pixels
    num_channels: int = 3  # colour channels of pixel_values
    max_image_length: int = -1  # image tokens kept per image; -1 keeps every valid patch
    # --- fusion transformer ---
    modality_type_vocab_size: int = 2  # modality embeddings: 0 = text, 1 = image, 2 = second image
    hidden_size: int = 768  # width of every token representation
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 12  # attention heads per layer (hidden_size must divide evenly)
    intermediate_size: int = 3072  # width of the MLP inside each layer
    hidden_act: str = "gelu"  # MLP and MLM-transform activation ("gelu" is the exact erf GELU)
    hidden_dropout_prob: float = 0.0  # dropout on embeddings, attention output and MLP output
    attention_probs_dropout_prob: float = 0.0  # dropout on attention probabilities
    initializer_range: float = 0.02  # std of the normal init of Linear, Conv and Embedding weights
    layer_norm_eps: float = 1e-12  # eps of every ViLT LayerNorm (the classifier heads use 1e-5)
    qkv_bias: bool = True  # bias on the query/key/value projections
    # --- heads ---
    num_images: int = -1  # images per example for ViltForImagesAndTextClassification (NLVR2: 2)
    tie_word_embeddings: bool = False  # share the MLM decoder weight with the word embeddings
    id2label: dict[int, str] | None = None  # class index -> name (num_labels is its length)
    label2id: dict[str, int] | None = None  # name -> class index; defaults to the inverse of id2label
    problem_type: str | None = None  # transformers' loss switch; kept, ViLT's heads fix their losses
    # --- outputs ---
    output_attentions: bool = False  # return the attention probabilities of every layer
    output_hidden_states: bool = False  # return the input and output of every layer
    return_dict: bool = True  # return output dataclasses (False: plain tuples)
    chunk_size_feed_forward: int = 0  # transformers' feed-forward chunking; the result is the same unchunked
    is_encoder_decoder: bool = False  # ViLT is an encoder
    # --- bookkeeping ---
    architectures: list[str] | None = None  # class names the weights were saved from
    extra: dict[str, Any] = field(default_factory=dict)  # keys this class does not know, kept verbatim

    model_type: ClassVar[str] = "vilt"
    sub_configs: ClassVar[dict[str, type]] = {}  # transformers' composite configs; ViLT has none
    attribute_map: ClassVar[dict[str, str]] = {}
    base_config_key: ClassVar[str] = ""

    def __init__(self, **kwargs: Any) -> None:
        known = {f.name: f for f in fields(self)}
        for name, spec in known.items():
            if name in kwargs:
                value = kwargs.pop(name)
            elif spec.default_factory is not MISSING:
                value = spec.default_factory()
            else:
                value = copy.deepcopy(spec.default)
            object.__setattr__(self, name, value)
        if not isinstance(self.extra, dict):
            raise ViltInputError(f"ViltConfig.extra must be a dict, got {type(self.extra).__name__}")
        self.extra = dict(self.extra)
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ViltInputError(
                f"this config has model_type={model_type!r}, not 'vilt': it describes another model; "
                "point vilt at a ViLT checkpoint"
            )
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        self._dtype: str | None = None
        self.dtype = dtype if dtype is not None else torch_dtype
        self._attn_implementation: str | None = kwargs.pop("attn_implementation", None)
        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        for internal in _NOT_KEPT:
            kwargs.pop(internal, None)
        num_labels = kwargs.pop("num_labels", None)
        self.extra.update(kwargs)  # the keys of other tools and versions, kept as attributes
        self._set_labels(num_labels)

    def _set_labels(self, num_labels: Any) -> None:
        """id2label (int keys) and label2id from what was passed (id2label wins over num_labels, whose
        default is 2), after every field is checked: the label names are made last, as num_labels may be absurd."""
        if self.id2label is not None:
            self.id2label = _id2label(self.id2label)
            if num_labels is not None and num_labels != len(self.id2label):
                logger.warning(
                    "num_labels=%s does not match the %d entries of id2label; id2label is kept",
                    num_labels,
                    len(self.id2label),
                )
            num_labels = len(self.id2label)
        elif num_labels is None:
            num_labels = 2
        self._validate(num_labels)
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        if self.label2id is None:
            self.label2id = {name: index for index, name in self.id2label.items()}
        _check_label2id(self.label2id)

    # ------------------------------------------------------------------ attributes as transformers has them
    def __getattr__(self, name: str) -> Any:
        """Keys of :attr:`extra` read as attributes (only called when normal lookup fails)."""
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """Fields, properties and private names are set as usual; any other name is an extra key."""
        if name.startswith("_") or name in self.__dict__ or hasattr(type(self), name) or _is_field(name):
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("extra", {}):
            del self.extra[name]
        else:
            object.__delattr__(self, name)

    def __iter__(self) -> Iterator[str]:
        """The names of the settings (fields, then extra keys), as iterating a transformers config gives."""
        yield from (f.name for f in fields(self) if f.name != "extra")
        yield from list(self.extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViltConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(use_diff=False)}"

    @property
    def num_labels(self) -> int:
        """The number of classifier outputs: the length of ``id2label``. Setting a different number rebuilds
        ``id2label`` (``LABEL_i``) and ``label2id``, as transformers does."""
        return len(self.id2label or {})

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.id2label is None or num_labels != self.num_labels:
            self._validate(num_labels)  # before the label names are made
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {name: index for index, name in self.id2label.items()}

    @property
    def dtype(self) -> Any:
        """The dtype the weights are stored in (``torch.float32``...), or None; torch is imported on use."""
        if self._dtype is None:
            return None
        import torch

        return getattr(torch, self._dtype)

    @dtype.setter
    def dtype(self, value: Any) -> None:
        if value is None or value == "auto":
            self._dtype = None
            return
        name = str(value).removeprefix("torch.")
        if name not in _DTYPE_NAMES:
            raise ViltInputError(
                f"ViltConfig.dtype must be a floating-point dtype name such as 'float32', got {value!r}"
            )
        self._dtype = name

    @property
    def torch_dtype(self) -> Any:
        """The transformers v4 name of :attr:`dtype`."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    @property
    def name_or_path(self) -> str:
        """The directory or hub id the config was loaded from ("" for a new one)."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: Any) -> None:
        self._name_or_path = str(value)

    @property
    def use_return_dict(self) -> bool:
        """Alias of ``return_dict`` (the name transformers v4 used)."""
        return self.return_dict

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> ViltConfig:
        """The config of the text part: ViLT has one config for everything, this one."""
        return self

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set the attributes of ``config_dict`` (unknown names become extra keys)."""
        for key, value in config_dict.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check that the fields describe a model that can be built on this machine, before anything is
        allocated: types (a bool is not a count), ranges, and the memory its parameters would take.

        Raises:
            ViltInputError: naming the field that is wrong and what it must be.
        """
        self._validate(self.num_labels)
        _id2label(self.id2label)
        _check_label2id(self.label2id)

    def _validate(self, num_labels: Any) -> None:
        """:meth:`validate` of the fields, with ``num_labels`` classifier outputs."""
        _check_count("num_labels", num_labels, 1)
        for name, minimum in _COUNTS.items():
            _check_count(name, getattr(self, name), minimum)
        for name in ("max_image_length", "num_images"):  # -1 means "all patches" / "not an NLVR2 model"
            value = getattr(self, name)
            _check_count(name, value, -1)
            if value == 0:
                raise ViltInputError(f"ViltConfig.{name} must be -1 or > 0, got 0")
        if self.pad_token_id is not None:
            _check_count("pad_token_id", self.pad_token_id, 0)
            if self.pad_token_id >= self.vocab_size:
                raise ViltInputError(
                    f"ViltConfig.pad_token_id ({self.pad_token_id}) must be a token id below vocab_size "
                    f"({self.vocab_size}), or null"
                )
        for name, (low, high) in _FLOATS.items():
            value = getattr(self, name)
            if not _is_number(value) or not low <= value <= high:
                raise ViltInputError(f"ViltConfig.{name} must be a number in [{low}, {high}], got {value!r}")
        if self.layer_norm_eps == 0:
            raise ViltInputError("ViltConfig.layer_norm_eps must be above 0 (LayerNorm divides by it), got 0")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ViltInputError(f"ViltConfig.{name} must be true or false, got {getattr(self, name)!r}")
        _check_count("chunk_size_feed_forward", self.chunk_size_feed_forward, 0)
        if self.hidden_act not in _ACTIVATIONS:
            raise ViltInputError(
                f"ViltConfig.hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(_ACTIVATIONS)}"
            )
        if self.problem_type not in _PROBLEM_TYPES:
            raise ViltInputError(
                f"ViltConfig.problem_type must be one of {', '.join(map(str, _PROBLEM_TYPES))}, got {self.problem_type!r}"
            )
        if self.architectures is not None and (
            not isinstance(self.architectures, list)
            or not all(isinstance(a, str) for a in self.architectures)
        ):
            raise ViltInputError(
                f"ViltConfig.architectures must be a list of class names, got {self.architectures!r}"
            )
        if not isinstance(self.extra, dict):
            raise ViltInputError(f"ViltConfig.extra must be a dict, got {type(self.extra).__name__}")
        if self.image_size % self.patch_size:
            raise ViltInputError(
                f"ViltConfig.image_size ({self.image_size}) must be divisible by patch_size "
                f"({self.patch_size}); pick sizes such as image_size=384, patch_size=32"
            )
        self._check_memory(num_labels)

    def validate_for_model(self) -> None:
        """:meth:`validate`, and what only a model needs: ``hidden_size`` split evenly into heads.

        Raises:
            ViltInputError: naming the field that is wrong.
        """
        self.validate()
        if self.hidden_size % self.num_attention_heads:
            raise ViltInputError(
                f"ViltConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads}): the hidden size is not a multiple of "
                "the number of attention heads"
            )

    def parameter_estimate(self, num_labels: int | None = None) -> dict[tuple[str, ...], int]:
        """An upper bound of the parameters of any model of this config, by the fields that size each part.

        The base model plus every head at once (an untied MLM decoder and the classifier of
        ``num_images`` pooled outputs): within 2% of the largest class for ViLT-B/32.

        Args:
            num_labels: the classifier outputs to count (default: this config's).
        """
        labels = self.num_labels if num_labels is None else num_labels
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        grid = (self.image_size // self.patch_size) ** 2 + 1  # patch positions + the image CLS token
        wide = max(self.num_images, 1) * h  # the NLVR2 classifier reads num_images pooled outputs
        inner = max(2 * h, wide)  # the classifier's hidden width: 2h for VQA, wide for NLVR2
        classifier = wide * inner + 3 * inner + (inner + 1) * labels  # Linear, LayerNorm, Linear
        return {
            ("vocab_size", "hidden_size"): 2 * v * h + v,  # word embeddings, MLM decoder and its bias
            ("max_position_embeddings", "hidden_size"): self.max_position_embeddings * h,
            ("type_vocab_size", "modality_type_vocab_size", "hidden_size"): (
                (self.type_vocab_size + self.modality_type_vocab_size) * h
            ),
            ("image_size", "patch_size", "hidden_size"): grid * h,
            ("num_channels", "patch_size", "hidden_size"): self.num_channels * self.patch_size**2 * h + h,
            ("num_hidden_layers", "hidden_size", "intermediate_size"): (
                self.num_hidden_layers * (4 * h * h + 2 * h * i + i + 9 * h)  # Q, K, V, output, MLP, 2 norms
            ),
            ("hidden_size",): 2 * h * h + 8 * h,  # text LayerNorm, final LayerNorm, pooler, MLM transform
            ("num_images", "num_labels", "hidden_size"): classifier,
        }

    def _check_memory(self, num_labels: int | None = None) -> None:
        """Refuse a config whose float32 parameters alone need more memory than the machine has."""
        parts = self.parameter_estimate(num_labels)
        needed = 4 * sum(parts.values())
        available = machine_memory()
        if needed <= available:
            return
        fields_of_largest = max(parts, key=parts.__getitem__)
        values = ", ".join(
            f"{name}={num_labels if name == 'num_labels' and num_labels is not None else getattr(self, name)}"
            for name in fields_of_largest
        )
        raise ViltInputError(
            f"ViltConfig: {values} make a model of about {sum(parts.values()):.3g} parameters "
            f"({needed / 2**30:.3g} GiB in float32), more than this machine's memory ({available / 2**30:.3g} GiB); "
            f"check {' and '.join(fields_of_largest)} in config.json"
        )

    def validate_num_images(self) -> None:
        """Check the fields the multi-image (NLVR2) head needs."""
        if self.num_images < 1:
            raise ViltInputError(
                f"ViltForImagesAndTextClassification needs config.num_images >= 1 (NLVR2 uses 2), "
                f"got {self.num_images}"
            )
        if self.modality_type_vocab_size < self.num_images + 1:
            raise ViltInputError(
                f"config.modality_type_vocab_size ({self.modality_type_vocab_size}) must be at least "
                f"num_images + 1 ({self.num_images + 1}): each image gets its own modality embedding"
            )

    # ------------------------------------------------------------------ dict / json
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build a config from a ``config.json`` dict, as transformers does; keyword arguments override it.

        Args:
            config_dict: the parsed JSON. Keys this class does not know are kept (:attr:`extra`).
            **kwargs: settings that override the dict, and ``return_unused_kwargs`` (then the result is
                ``(config, {})``: every setting is used).
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        merged = {**config_dict, **kwargs}
        if "id2label" in kwargs and "num_labels" not in kwargs:
            merged.pop("num_labels", None)
        if "id2label" in kwargs and "label2id" not in kwargs:  # new label names: their inverse
            merged.pop("label2id", None)
        if "num_labels" in kwargs and "id2label" not in kwargs:  # a new head size: new label names
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        config = cls(**merged)
        return (config, {}) if return_unused else config

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready, in the reference layout (id2label keys as strings, extra keys included)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["id2label"] = {str(k): v for k, v in (self.id2label or {}).items()}
        if out["architectures"] is None:
            out.pop("architectures")
        if self._dtype is not None:
            out["torch_dtype"] = self._dtype  # the name both transformers v4 and v5 read
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the settings every transformers config has that are at their defaults
        (``output_attentions=False``, two ``LABEL_i`` labels...), as transformers writes ``config.json``."""
        out = self.to_dict()
        for name, default in _COMMON_DEFAULTS.items():
            if name in out and out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ViltConfig:
        """Read a ``config.json`` file."""
        return cls.from_dict(read_json(path))

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON text (``use_diff``: :meth:`to_diff_dict`, else :meth:`to_dict`)."""
        return (
            json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"
        )

    def to_json_file(self, path: str | os.PathLike[str], use_diff: bool = True) -> None:
        """Write a ``config.json`` that transformers reads back to an equal config."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string(use_diff))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Load ``config.json`` from a local directory, ``bundled`` or a hub id (see :mod:`vilt.hub`).

        Keyword arguments are the hub options (``revision``, ``cache_dir``, ``subfolder``...) and settings
        to override (unknown ones are kept, as transformers keeps them as attributes); with
        ``return_unused_kwargs=True`` the result is ``(config, {})``.
        """
        hub, overrides = split_hub_options(kwargs)
        return_unused = overrides.pop("return_unused_kwargs", False)
        config_file = resolve_file(path, CONFIG_NAME, **hub)
        assert config_file is not None  # resolve_file raises for a missing required file
        config = cls.from_json_file(config_file)
        if overrides:
            config = config.replace(**overrides)
        config.name_or_path = path
        return (config, {}) if return_unused else config

    def save_pretrained(self, directory: str | os.PathLike[str], **_: Any) -> None:
        """Write ``config.json`` into ``directory`` (created if needed), all or nothing."""
        os.makedirs(directory, exist_ok=True)
        atomic_write(os.path.join(directory, CONFIG_NAME), self.to_json_file)

    def replace(self, **changes: Any) -> ViltConfig:
        """A copy with some settings changed (the labels follow a new ``id2label`` or ``num_labels``)."""
        config = ViltConfig.from_dict(self.to_dict(), **changes)
        config._attn_implementation = self._attn_implementation
        config._name_or_path = self._name_or_path
        return config


def _is_field(name: str) -> bool:
    return name in {f.name for f in fields(ViltConfig)}


def _is_number(value: Any) -> bool:
    """An int or a float, finite; not a bool (``true`` in a JSON file is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_count(name: str, value: Any, minimum: int) -> None:
    """``value`` is an int (not a bool, float or string) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ViltInputError(f"ViltConfig.{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ViltInputError(f"ViltConfig.{name} must be >= {minimum}, got {value}")


def _id2label(id2label: Any) -> dict[int, str]:
    """``{index: name}`` with the indices 0..n-1, from int keys or the string keys of a config.json."""
    if not isinstance(id2label, dict) or not id2label:
        raise ViltInputError(
            f'ViltConfig.id2label must be a non-empty {{"0": "name", ...}} mapping, got {type(id2label).__name__}'
        )
    labels = {}
    for key, name in id2label.items():
        index = key if isinstance(key, int) and not isinstance(key, bool) else None
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            index = int(key)
        if index is None or not isinstance(name, str):
            raise ViltInputError(
                f"ViltConfig.id2label must map class indices to names, got {key!r}: {name!r}"
            )
        labels[index] = name
    if sorted(labels) != list(range(len(labels))):
        raise ViltInputError(
            f"ViltConfig.id2label must number its classes 0..{len(labels) - 1} (one name per classifier "
            f"output), got indices {sorted(labels)[:10]}"
        )
    return labels


def _check_label2id(label2id: Any) -> None:
    """``{name: index}``; indices may be ints or digit strings (kept as given, as transformers keeps them)."""
    if not isinstance(label2id, dict) or not all(
        isinstance(k, str)
        and isinstance(v, (int, str))
        and not isinstance(v, bool)
        and str(v).lstrip("-").isdigit()
        for k, v in label2id.items()
    ):
        raise ViltInputError(
            f'ViltConfig.label2id must map names to class indices ({{"name": 0, ...}}), got {label2id!r:.200}'
        )


@functools.cache
def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or the cgroup limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 2**50
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total
