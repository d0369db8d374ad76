"""ViLT's text tokenizer: BERT-base-uncased WordPiece on the ``tokenizers`` library.

``ViltTokenizer`` gives the same ids, masks and structure as ``transformers.BertTokenizerFast`` with the
same vocabulary: a ``BertNormalizer`` (clean text, lower-case, strip accents, space out CJK characters),
``BertPreTokenizer``, a WordPiece model with ``[UNK]`` for unknown words, ``[CLS] A [SEP] (B [SEP])``
templates and the WordPiece decoder. The bert-base-uncased vocabulary ships with the package, and
``model_max_length`` is 40, the number of text positions of every ViLT checkpoint.

Like the reference, the tokenizer does not truncate unless asked, so it can return more than 40 tokens;
``ViltProcessor`` raises a ValueError in that case instead of letting the model fail.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .errors import ViltInputError
from .feature import BatchFeature
from .files import atomic_directory, read_json
from .hub import resolve_file, split_hub_options

VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

DEFAULT_MODEL_MAX_LENGTH = 40
# transformers reads a model_max_length above this as "no limit" (it saves 1e30 when there is none).
_NO_LIMIT = int(1e20)
# The special tokens, in the order the reference registers them as added tokens.
_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    None: None,
    False: None,
    "do_not_truncate": None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}

TextInput = str | Sequence[str] | Sequence[tuple[str, str]]


def load_vocab(text: str) -> dict[str, int]:
    """Parse a ``vocab.txt``: one token per line, its id being the line number.

    Args:
        text: The file's contents.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {token: index for index, token in enumerate(lines)}


def _bundled_vocab_text() -> str:
    return (resources.files("vilt") / "data" / VOCAB_FILE).read_text(encoding="utf-8")


def build_wordpiece(
    vocab: dict[str, int],
    do_lower_case: bool = True,
    tokenize_chinese_chars: bool = True,
    strip_accents: bool | None = None,
    special_tokens: dict[str, str] | None = None,
) -> Tokenizer:
    """Build the BERT WordPiece pipeline of ``BertTokenizerFast`` with the ``tokenizers`` library.

    Args:
        vocab: Token to id.
        do_lower_case: Lower-case the text (and strip accents unless ``strip_accents`` says otherwise).
        tokenize_chinese_chars: Put spaces around CJK characters.
        strip_accents: Strip accents; None follows ``do_lower_case``.
        special_tokens: The special token strings, keyed like ``_SPECIAL_TOKENS``.
    """
    tokens = {**_SPECIAL_TOKENS, **(special_tokens or {})}
    missing = [token for token in tokens.values() if token not in vocab]
    if missing:
        raise ValueError(f"the vocabulary lacks the special tokens {missing}.")
    backend = Tokenizer(WordPiece(vocab, unk_token=tokens["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tokens["cls_token"], tokens["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return backend


class ViltTokenizer:
    """BERT-uncased WordPiece tokenizer with the interface and outputs of ``transformers.BertTokenizerFast``.

    Args:
        vocab_file: A ``vocab.txt``; the bundled bert-base-uncased vocabulary when None.
        tokenizer_object: A ready ``tokenizers.Tokenizer`` (e.g. read from ``tokenizer.json``), used
            instead of building one from ``vocab_file``.
        do_lower_case: Lower-case the text (when building from a vocabulary).
        tokenize_chinese_chars: Put spaces around CJK characters (when building from a vocabulary).
        strip_accents: Strip accents; None follows ``do_lower_case`` (when building from a vocabulary).
        model_max_length: The longest sequence the model takes; the default length for
            ``padding="max_length"`` and ``truncation=True``.
        unk_token, sep_token, pad_token, cls_token, mask_token: The special token strings.
    """

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        tokenizer_object: Tokenizer | None = None,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
    ) -> None:
        special_tokens = {
            "pad_token": pad_token,
            "unk_token": unk_token,
            "cls_token": cls_token,
            "sep_token": sep_token,
            "mask_token": mask_token,
        }
        if tokenizer_object is None:
            text = (
                _bundled_vocab_text() if vocab_file is None else Path(vocab_file).read_text(encoding="utf-8")
            )
            tokenizer_object = build_wordpiece(
                load_vocab(text), do_lower_case, tokenize_chinese_chars, strip_accents, special_tokens
            )
        tokenizer_object.add_special_tokens(
            [AddedToken(token, special=True, normalized=False) for token in special_tokens.values()]
        )
        self._backend = tokenizer_object
        self._lock = threading.Lock()  # each call sets the backend's padding and truncation
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.model_max_length = int(model_max_length)
        self.pad_token, self.unk_token, self.cls_token = pad_token, unk_token, cls_token
        self.sep_token, self.mask_token = sep_token, mask_token
        self.pad_token_type_id = 0

    # -- vocabulary ------------------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary (without added tokens)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token to id, added tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The special token strings by role (``unk_token``, ``sep_token``, ...)."""
        return {
            name: getattr(self, name)
            for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        }

    @property
    def all_special_tokens(self) -> list[str]:
        return list(self.special_tokens_map.values())

    @property
    def all_special_ids(self) -> list[int]:
        return [self._token_id(token) for token in self.all_special_tokens]

    @property
    def pad_token_id(self) -> int:
        return self._token_id(self.pad_token)

    @property
    def unk_token_id(self) -> int:
        return self._token_id(self.unk_token)

    @property
    def cls_token_id(self) -> int:
        return self._token_id(self.cls_token)

    @property
    def sep_token_id(self) -> int:
        return self._token_id(self.sep_token)

    @property
    def mask_token_id(self) -> int:
        return self._token_id(self.mask_token)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """The id of a token, or the ids of a list of tokens; unknown tokens give ``unk_token_id``.

        Args:
            tokens: A token or a list of tokens.
        """
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(token) for token in tokens]

    def _token_id(self, token: str) -> int:
        """A token's id; a token outside the vocabulary has the id of ``unk_token``, as in the reference."""
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            token_id = self._backend.token_to_id(self.unk_token)
        if token_id is None:
            raise ViltInputError(
                f"unk_token {self.unk_token!r} is not in the vocabulary; use one of its tokens."
            )
        return token_id

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """The token of an id, or the tokens of a list of ids.

        Args:
            ids: An id or a list of ids.
            skip_special_tokens: Leave the special tokens out of a list.
        """
        if isinstance(ids, (int, np.integer)):
            return self._id_token(int(ids))
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_token(int(i)) for i in ids if int(i) not in skipped]

    def _id_token(self, token_id: int) -> str:
        """An id's token; an id outside the vocabulary raises instead of giving None."""
        token = self._backend.id_to_token(token_id) if token_id >= 0 else None
        if token is None:
            raise ViltInputError(f"token id {token_id} is outside the vocabulary (0 to {len(self) - 1}).")
        return token

    # -- encoding --------------------------------------------------------------------------------------

    def __call__(
        self,
        text: TextInput,
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """Tokenise one text (or text pair) or a batch of them, like ``BertTokenizerFast.__call__``.

        Args:
            text: A string, a list of strings, or a list of (text, text_pair) tuples.
            text_pair: The second sequence(s) of pairs: a string for a single text, a list for a batch.
            add_special_tokens: Add ``[CLS]`` and ``[SEP]``.
            padding: False/"do_not_pad", True/"longest" (to the longest in the batch) or "max_length"
                (to ``max_length``, by default ``model_max_length``).
            truncation: None/False/"do_not_truncate", True/"longest_first", "only_first" or
                "only_second". With None, passing ``max_length`` without padding truncates, as in the
                reference.
            max_length: Length for padding and truncation.
            pad_to_multiple_of: Pad lengths up to a multiple of this.
            return_token_type_ids: Return ``token_type_ids`` (default True).
            return_attention_mask: Return ``attention_mask`` (default True).
            return_special_tokens_mask: Return ``special_tokens_mask``.
            return_offsets_mapping: Return ``offset_mapping``, character spans of each token.
            return_length: Return ``length``, the length of each sequence.
            return_tensors: None for lists (a flat list for a single text), "np" or "pt" for (B, T) arrays
                or tensors.

        Returns:
            A BatchFeature with ``input_ids``, ``token_type_ids``, ``attention_mask`` and the other
            requested keys, in the reference's order.
        """
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}.")
        batched = isinstance(text, (list, tuple))
        batch = _batch_inputs(text, text_pair, batched)
        padding_mode, truncation_mode, max_length = self._strategies(
            padding, truncation, max_length, pad_to_multiple_of
        )
        encodings = self._encode(
            batch, add_special_tokens, padding_mode, truncation_mode, max_length, pad_to_multiple_of
        )
        columns: dict[str, list[Any]] = {"input_ids": [encoding.ids for encoding in encodings]}
        if return_token_type_ids is None or return_token_type_ids:
            columns["token_type_ids"] = [encoding.type_ids for encoding in encodings]
        if return_attention_mask is None or return_attention_mask:
            columns["attention_mask"] = [encoding.attention_mask for encoding in encodings]
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = [encoding.special_tokens_mask for encoding in encodings]
        if return_offsets_mapping:
            columns["offset_mapping"] = [encoding.offsets for encoding in encodings]
        if return_length:
            columns["length"] = [len(encoding.ids) for encoding in encodings]
        if return_tensors is not None:
            return BatchFeature(
                {key: _as_tensor(key, value, return_tensors) for key, value in columns.items()}
            )
        if not batched:  # a single text: drop the batch level of the per-token lists
            columns = {
                key: value[0] if isinstance(value[0], list) else value for key, value in columns.items()
            }
        return BatchFeature(columns)

    def _strategies(
        self,
        padding: bool | str,
        truncation: bool | str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
    ) -> tuple[str | None, str | None, int | None]:
        """Padding mode, truncation mode and length, by the reference's rules."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # the reference's legacy rule: max_length alone truncates
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {list(_PADDING)}, got {padding!r}.")
        if truncation not in _TRUNCATION:
            raise ValueError(f"truncation must be one of {list(_TRUNCATION)}, got {truncation!r}.")
        padding_mode, truncation_mode = _PADDING[padding], _TRUNCATION[truncation]
        if max_length is None:
            no_limit = self.model_max_length > _NO_LIMIT
            if padding_mode == "max_length":
                padding_mode, max_length = (None, None) if no_limit else (padding_mode, self.model_max_length)
            if truncation_mode is not None:
                truncation_mode, max_length = (
                    (None, max_length) if no_limit else (truncation_mode, self.model_max_length)
                )
        if (
            truncation_mode is not None
            and padding_mode is not None
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"Truncation and padding are both activated but truncation length ({max_length}) is not a "
                f"multiple of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return padding_mode, truncation_mode, max_length

    def _encode(
        self,
        batch: list[str | tuple[str, str]],
        add_special_tokens: bool,
        padding_mode: str | None = None,
        truncation_mode: str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> list[Encoding]:
        """Encode a batch with the backend, its padding and truncation set for this call only."""
        with self._lock:
            if truncation_mode is None:
                self._backend.no_truncation()
            else:
                assert max_length is not None  # _strategies gives a length with every truncation mode
                self._backend.enable_truncation(
                    max_length, strategy=truncation_mode, direction=self.truncation_side
                )
            if padding_mode is None:
                self._backend.no_padding()
            else:
                self._backend.enable_padding(
                    direction=self.padding_side,
                    pad_id=self.pad_token_id,
                    pad_type_id=self.pad_token_type_id,
                    pad_token=self.pad_token,
                    length=max_length if padding_mode == "max_length" else None,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            return self._backend.encode_batch(batch, add_special_tokens=add_special_tokens)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The WordPiece tokens of a text (or a text pair).

        Args:
            text: The text.
            pair: An optional second text.
            add_special_tokens: Include ``[CLS]`` and ``[SEP]``.
        """
        return self._encode(_batch_inputs(text, pair, batched=False), add_special_tokens)[0].tokens

    # -- decoding --------------------------------------------------------------------------------------

    def decode(
        self, token_ids: int | Sequence[int] | np.ndarray | torch.Tensor, skip_special_tokens: bool = False
    ) -> str:
        """Turn ids back into text (WordPiece pieces joined, ``##`` removed).

        Args:
            token_ids: An id or a 1-d sequence, array or tensor of ids.
            skip_special_tokens: Leave out ``[CLS]``, ``[SEP]``, ``[PAD]`` and the other special tokens.
        """
        ids = token_ids.tolist() if isinstance(token_ids, (np.ndarray, torch.Tensor)) else token_ids
        ids = [ids] if isinstance(ids, (int, np.integer)) else [int(i) for i in ids]
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        skip_special_tokens: bool = False,
    ) -> list[str]:
        """``decode`` each sequence of a batch.

        Args:
            sequences: A list of id sequences, or a 2-d array or tensor.
            skip_special_tokens: Leave out the special tokens.
        """
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    # -- saving and loading ----------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, all or nothing.

        The files are those of a saved ``BertTokenizerFast``, so ``transformers.AutoTokenizer`` loads them.

        Args:
            save_directory: The directory (created if missing).

        Returns:
            The paths written.
        """
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": False,
            **self.special_tokens_map,
        }
        vocab = self._backend.get_vocab(with_added_tokens=False)
        with atomic_directory(save_directory) as staging:
            (staging / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (staging / SPECIAL_TOKENS_MAP_FILE).write_text(
                json.dumps(self.special_tokens_map, indent=2) + "\n"
            )
            (staging / VOCAB_FILE).write_text(
                "".join(token + "\n" for token in sorted(vocab, key=vocab.__getitem__))
            )
            with self._lock:  # save without the padding and truncation of the last call
                self._backend.no_truncation()
                self._backend.no_padding()
                self._backend.save(str(staging / TOKENIZER_FILE))
        names = (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, VOCAB_FILE, TOKENIZER_FILE)
        return tuple(str(Path(save_directory) / name) for name in names)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> ViltTokenizer:
        """Load from a directory holding tokenizer.json or vocab.txt, and optionally tokenizer_config.json
        and special_tokens_map.json (as saved by this class or by transformers).

        Without a ``model_max_length`` in tokenizer_config.json it is 40, ViLT's text length
        (transformers would read "no limit").

        Args:
            pretrained_model_name_or_path: A directory, ``bundled`` or a hub id (see :mod:`vilt.hub`).
            **kwargs: Constructor arguments that override the saved ones (e.g. ``model_max_length``),
                and the hub options (``revision``, ``cache_dir``, ``local_files_only``...).
        """
        names = set(inspect.signature(cls.__init__).parameters) - {"self", "vocab_file", "tokenizer_object"}
        hub, rest = split_hub_options(kwargs)
        overrides = {key: value for key, value in rest.items() if key in names}
        path = pretrained_model_name_or_path

        def find(name: str) -> Path | None:
            found = resolve_file(path, name, required=False, **hub)
            return None if found is None else Path(found)

        config = _read_json(find(TOKENIZER_CONFIG_FILE))
        special_tokens = {**config, **_read_json(find(SPECIAL_TOKENS_MAP_FILE))}
        settings: dict[str, Any] = {
            key: _token_content(special_tokens[key]) for key in _SPECIAL_TOKENS if key in special_tokens
        }
        settings.update({key: config[key] for key in names - set(_SPECIAL_TOKENS) if key in config})
        settings.update(overrides)
        tokenizer_file = find(TOKENIZER_FILE)
        if tokenizer_file is not None:
            try:
                backend = Tokenizer.from_file(str(tokenizer_file))
            except Exception as err:  # tokenizers raises a bare Exception for a malformed file
                raise ViltInputError(
                    f"{tokenizer_file} is not a readable tokenizer.json ({err}); download or save it again"
                ) from None
            return cls(tokenizer_object=backend, **settings)
        vocab_file = find(VOCAB_FILE)
        if vocab_file is not None:
            return cls(vocab_file=vocab_file, **settings)
        raise FileNotFoundError(f"{str(path)!r} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}.")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"do_lower_case={self.do_lower_case})"
        )


def _batch_inputs(text: Any, text_pair: Any, batched: bool) -> list[str | tuple[str, str]]:
    """The inputs of ``encode_batch``: strings, or (text, text_pair) tuples."""
    if not batched:
        if not isinstance(text, str) or not (text_pair is None or isinstance(text_pair, str)):
            raise ValueError("a single text must be a string, and its text_pair a string or None.")
        return [(text, text_pair)] if text_pair else [text]  # the reference ignores an empty text_pair
    if len(text) == 0:
        raise ValueError("text is an empty list; pass at least one string.")
    if text_pair is not None:
        if isinstance(text_pair, str) or len(text_pair) != len(text):
            raise ValueError("for a batch of texts, text_pair must be a list of the same length.")
        text = list(zip(text, text_pair))
    for item in text:
        is_pair = (
            isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(part, str) for part in item)
        )
        if not (isinstance(item, str) or is_pair):
            raise ValueError(
                f"text must be a string or a list of strings (or of string pairs), got {item!r}."
            )
    return [tuple(item) if isinstance(item, list) else item for item in text]


def _as_tensor(key: str, value: list, return_tensors: str) -> np.ndarray | torch.Tensor:
    """A column of equal-length rows as a (B, T) array or tensor; ragged rows raise a ValueError."""
    lengths = {len(row) for row in value} if isinstance(value[0], list) else set()
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make a tensor of {key}: the sequences have different lengths ({min(lengths)} to "
            f"{max(lengths)}). Pass padding=True (or padding='max_length') to batch them."
        )
    return torch.tensor(value) if return_tensors == "pt" else np.asarray(value)


def _read_json(path: Path | None) -> dict[str, Any]:
    return read_json(path) if path is not None else {}


def _token_content(token: str | dict[str, Any]) -> str:
    """A special token as saved by transformers: a string, or an AddedToken dict with "content"."""
    return token["content"] if isinstance(token, dict) else token
