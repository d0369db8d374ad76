"""ViltConfig: the hyper-parameters of a ViLT model, compatible with the reference ``config.json``.

Field names, defaults and meaning follow ``transformers.ViltConfig`` exactly, so a reference
``config.json`` loads here and the ``config.json`` written here loads in ``transformers`` to an
equal config. Keys this class does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .files import atomic_write
from .hub import resolve_file, split_hub_options

CONFIG_NAME = "config.json"


@dataclass
class ViltConfig:
    """Configuration of a ViLT model and its heads (same fields and defaults as the reference).

    Raises:
        ValueError: when a field has an impossible value (see :meth:`validate`).
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
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check that the fields describe a model that can be built; raise ValueError if not."""
        for name in ("image_size", "patch_size", "hidden_size", "num_attention_heads", "num_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ViltConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViltConfig.image_size ({self.image_size}) must be divisible by patch_size "
                f"({self.patch_size}); pick sizes such as image_size=384, patch_size=32"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ViltConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if not isinstance(self.max_image_length, int) or isinstance(self.max_image_length, bool):
            raise ValueError(
                f"ViltConfig.max_image_length must be an int (-1 keeps every patch), got {self.max_image_length!r}"
            )
        if self.max_image_length == 0 or self.max_image_length < -1:
            raise ValueError(
                f"ViltConfig.max_image_length must be -1 (all patches) or > 0, got {self.max_image_length}"
            )
        for name in ("vocab_size", "max_position_embeddings", "num_hidden_layers", "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ViltConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.modality_type_vocab_size < 2:
            raise ValueError("ViltConfig.modality_type_vocab_size must be >= 2 (text and image)")
        if self.num_labels < 1:
            raise ValueError(f"ViltConfig.num_labels must be >= 1, got {self.num_labels}")
        if self.hidden_act not in ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish"):
            raise ValueError(f"ViltConfig.hidden_act {self.hidden_act!r} is not supported")

    def validate_num_images(self) -> None:
        """Check the fields the multi-image (NLVR2) head needs."""
        if self.num_images < 1:
            raise ValueError(
                f"ViltForImagesAndTextClassification needs config.num_images >= 1 (NLVR2 uses 2), "
                f"got {self.num_images}"
            )
        if self.modality_type_vocab_size < self.num_images + 1:
            raise ValueError(
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
            raise ValueError(
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
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); is it a ViLT config.json?") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must contain a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

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
