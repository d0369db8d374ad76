"""ViltConfig: the hyper-parameters of a ViLT model, compatible with the reference ``config.json``.

Field names, defaults and meaning follow ``transformers.ViltConfig`` exactly, so a reference
``config.json`` loads here and the ``config.json`` written here loads in ``transformers`` to an
equal config. Keys this class does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ViltInputError
from .files import atomic_write, read_json
from .hub import resolve_file, split_hub_options

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
    "num_labels": 1,
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


@dataclass
class ViltConfig:
    """Configuration of a ViLT model and its heads (same fields and defaults as the reference).

    Raises:
        ViltInputError: (a ValueError) when a field has an impossible type or value, or the model would not
            fit in this machine's memory (see :meth:`validate`).
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
    num_labels: int = 2  # classifier outputs; set from id2label when that is given
    id2label: dict[int, str] | None = None  # class index -> name; defaults to LABEL_0..LABEL_{n-1}
    label2id: dict[str, int] | None = None  # name -> class index; defaults to the inverse of id2label
    # --- outputs ---
    output_attentions: bool = False  # return the attention probabilities of every layer
    output_hidden_states: bool = False  # return the input and output of every layer
    return_dict: bool = True  # return output dataclasses (False: plain tuples)
    # --- bookkeeping ---
    architectures: list[str] | None = None  # class names the weights were saved from
    extra: dict[str, Any] = field(default_factory=dict)  # unknown config.json keys, kept verbatim

    model_type = "vilt"

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = _id2label(self.id2label)
            self.num_labels = len(self.id2label)
        if self.label2id is not None:
            self.label2id = _label2id(self.label2id)
        self.validate()  # before the default label names are made: num_labels may be absurd
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check that the fields describe a model that can be built on this machine, before anything is
        allocated: types (a bool is not a count), ranges, and the memory its parameters would take.

        Raises:
            ViltInputError: naming the field that is wrong and what it must be.
        """
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
        if self.hidden_act not in _ACTIVATIONS:
            raise ViltInputError(
                f"ViltConfig.hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(_ACTIVATIONS)}"
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
        if self.hidden_size % self.num_attention_heads:
            raise ViltInputError(
                f"ViltConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        self._check_memory()

    def parameter_estimate(self) -> dict[tuple[str, ...], int]:
        """An upper bound of the parameters of any model of this config, by the fields that size each part.

        The base model plus every head at once (an untied MLM decoder and the classifier of
        ``num_images`` pooled outputs): within 2% of the largest class for ViLT-B/32.
        """
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        grid = (self.image_size // self.patch_size) ** 2 + 1  # patch positions + the image CLS token
        wide = max(self.num_images, 1) * h  # the NLVR2 classifier reads num_images pooled outputs
        inner = max(2 * h, wide)  # the classifier's hidden width: 2h for VQA, wide for NLVR2
        classifier = wide * inner + 3 * inner + (inner + 1) * self.num_labels  # Linear, LayerNorm, Linear
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

    def _check_memory(self) -> None:
        """Refuse a config whose float32 parameters alone need more memory than the machine has."""
        parts = self.parameter_estimate()
        needed = 4 * sum(parts.values())
        available = machine_memory()
        if needed <= available:
            return
        fields_of_largest = max(parts, key=parts.__getitem__)
        values = ", ".join(f"{name}={getattr(self, name)}" for name in fields_of_largest)
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

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def use_return_dict(self) -> bool:
        """Alias of ``return_dict`` (the name transformers v4 used)."""
        return self.return_dict

    # ------------------------------------------------------------------ dict / json
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ViltConfig:
        """Build a config from a reference ``config.json`` dict; unknown keys go to ``extra``.

        Args:
            config_dict: the parsed JSON.
            **kwargs: fields that override the dict.
        """
        merged = {**config_dict, **kwargs}
        model_type = merged.pop("model_type", "vilt")
        if model_type != "vilt":
            raise ViltInputError(
                f"this config.json has model_type={model_type!r}, not 'vilt': it describes another model; "
                "point vilt at a ViLT checkpoint"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in merged.items() if k in known}
        extra = dict(merged.get("extra") or {})
        extra.update({k: v for k, v in merged.items() if k not in known and k != "extra"})
        if "id2label" in values and "num_labels" in values and values["id2label"] is not None:
            values.pop("num_labels")  # id2label wins, as in the reference
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the reference layout (id2label keys as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["id2label"] = {str(k): v for k, v in (self.id2label or {}).items()}
        if out["architectures"] is None:
            out.pop("architectures")
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ViltConfig:
        """Read a ``config.json`` file."""
        return cls.from_dict(read_json(path))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        """Write a ``config.json`` that transformers reads back to an equal config."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> ViltConfig:
        """Load ``config.json`` from a local directory, ``bundled`` or a hub id (see :mod:`vilt.hub`).

        Keyword arguments are the hub options (``revision``, ``cache_dir``...) and fields to override
        (unknown ones are kept in ``extra``, as transformers keeps them as attributes).
        """
        hub, overrides = split_hub_options(kwargs)
        config_file = resolve_file(path, CONFIG_NAME, **hub)
        config = cls.from_json_file(config_file)
        return config.replace(**overrides) if overrides else config

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` into ``directory`` (created if needed), all or nothing."""
        os.makedirs(directory, exist_ok=True)
        atomic_write(os.path.join(directory, CONFIG_NAME), self.to_json_file)

    def replace(self, **changes: Any) -> ViltConfig:
        """A copy with some fields changed (labels are re-derived when id2label changes)."""
        data = self.to_dict()
        if "id2label" in changes or "num_labels" in changes:
            data.pop("label2id", None)
            if "num_labels" in changes and "id2label" not in changes:
                data.pop("id2label", None)
        data.update(changes)
        return ViltConfig.from_dict(data)


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


def _label2id(label2id: Any) -> dict[str, int]:
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
    return {k: int(v) for k, v in label2id.items()}


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
