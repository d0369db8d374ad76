"""``ViltProcessor``: the image processor and the tokenizer behind one call, as in ``transformers``.

``processor(images, text)`` returns ``input_ids``, ``token_type_ids``, ``attention_mask``,
``pixel_values`` and ``pixel_mask``, with the reference's values and key order. Tokenizer arguments
(``padding``, ``truncation``, ``max_length``...) go to the tokenizer, image-processor arguments (``size``,
``do_pad``...) to the image processor, and ``return_tensors`` to both.

One deviation: text longer than the tokenizer's ``model_max_length`` (40 for ViLT) without truncation
raises a ValueError. The reference returns it, and the model then fails on its 40 position embeddings.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .feature import BatchFeature
from .files import atomic_directory
from .hub import split_hub_options
from .image_processing import PREPROCESSOR_CONFIG_FILE, ViltImageProcessor
from .tokenization import TOKENIZER_CONFIG_FILE, ViltTokenizer

_TEXT_ARGUMENTS = frozenset(inspect.signature(ViltTokenizer.__call__).parameters) - {
    "self",
    "text",
    "return_tensors",
}
_IMAGE_ARGUMENTS = frozenset(inspect.signature(ViltImageProcessor.preprocess).parameters) - {
    "self",
    "images",
    "return_tensors",
}
_TOKENIZER_SETTINGS = frozenset(inspect.signature(ViltTokenizer.__init__).parameters) - {
    "self",
    "vocab_file",
    "tokenizer_object",
}
_IMAGE_SETTINGS = frozenset(inspect.signature(ViltImageProcessor.__init__).parameters) - {"self"}


class ViltProcessor:
    """Prepares images and text for ViLT models.

    Args:
        image_processor: The image processor; ``ViltImageProcessor()`` when None.
        tokenizer: The tokenizer; ``ViltTokenizer()`` (bundled bert-base-uncased vocabulary, 40 tokens)
            when None.
    """

    def __init__(
        self, image_processor: ViltImageProcessor | None = None, tokenizer: ViltTokenizer | None = None
    ) -> None:
        self.image_processor = ViltImageProcessor() if image_processor is None else image_processor
        self.tokenizer = ViltTokenizer() if tokenizer is None else tokenizer

    @property
    def model_input_names(self) -> list[str]:
        """The names of the model inputs this processor makes, in output order."""
        return self.tokenizer.model_input_names + self.image_processor.model_input_names

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise ``text`` and preprocess ``images``.

        Args:
            images: What ``ViltImageProcessor.preprocess`` takes: an image, a list of images, or a list of
                equal-length image lists (NLVR2: one pair per text, giving (B, 2, 3, H, W) pixel_values).
            text: A string or a list of strings (what ``ViltTokenizer.__call__`` takes).
            return_tensors: None (lists), "np" or "pt", for both parts.
            **kwargs: Arguments of ``ViltTokenizer.__call__`` (``text_pair``, ``padding``,
                ``truncation``, ``max_length``...) and of ``ViltImageProcessor.preprocess`` (``size``,
                ``do_pad``...).

        Returns:
            A BatchFeature with ``input_ids``, ``token_type_ids``, ``attention_mask`` (and the other
            requested text keys), then ``pixel_values`` and ``pixel_mask``.

        Raises:
            ValueError: If neither images nor text is given, or if a text is longer than
                ``tokenizer.model_max_length`` tokens while truncation is off.
        """
        unknown = set(kwargs) - _TEXT_ARGUMENTS - _IMAGE_ARGUMENTS
        if unknown:
            raise TypeError(f"ViltProcessor got unexpected keyword arguments {sorted(unknown)}")
        if images is None and text is None:
            raise ValueError("pass images, text, or both.")
        outputs = BatchFeature()
        if text is not None:
            text_kwargs = {key: value for key, value in kwargs.items() if key in _TEXT_ARGUMENTS}
            self._check_length(text, **text_kwargs)
            outputs.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            image_kwargs = {key: value for key, value in kwargs.items() if key in _IMAGE_ARGUMENTS}
            outputs.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        return outputs

    def _check_length(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **unused: Any,
    ) -> None:
        """Raise if a text would exceed ``model_max_length`` tokens because truncation is off."""
        implicit_truncation = truncation is None and max_length is not None and padding is False
        if truncation not in (None, False, "do_not_truncate") or implicit_truncation:
            return
        lengths = self.tokenizer(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            return_token_type_ids=False,
            return_attention_mask=False,
            return_length=True,
        )["length"]
        limit = self.tokenizer.model_max_length
        longest = max(lengths)
        if longest > limit:
            index = lengths.index(longest)
            where = "The text" if len(lengths) == 1 else f"Text {index} of the batch"
            raise ValueError(
                f"{where} is {longest} tokens long, but the model takes at most {limit} "
                f"(tokenizer.model_max_length). Pass truncation=True to cut it to {limit} tokens "
                f"(for batches: padding='max_length', truncation=True, max_length={limit}), or shorten it."
            )

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str:
        """``tokenizer.decode``.

        Args:
            token_ids: A 1-d sequence, array or tensor of ids.
            skip_special_tokens: Leave out the special tokens.
        """
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """``tokenizer.batch_decode``.

        Args:
            sequences: A list of id sequences, or a 2-d array or tensor.
            skip_special_tokens: Leave out the special tokens.
        """
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write preprocessor_config.json and the tokenizer files (tokenizer.json, vocab.txt,
        tokenizer_config.json, special_tokens_map.json), loadable by ``transformers.ViltProcessor``.

        Both JSON configs name ``"processor_class": "ViltProcessor"``, as transformers writes them, so
        ``transformers.AutoProcessor`` opens the directory as a ViltProcessor (not a tokenizer) even
        without a model's config.json beside them. The directory changes all at once
        (:func:`vilt.files.atomic_directory`).

        Args:
            save_directory: The directory (created if missing).

        Returns:
            The paths written.
        """
        with atomic_directory(save_directory) as staging:
            written = [
                *self.image_processor.save_pretrained(staging),
                *self.tokenizer.save_pretrained(staging),
            ]
            for name in (PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
                _name_the_processor_class(staging / name)
        return [str(Path(save_directory) / Path(path).name) for path in written]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> ViltProcessor:
        """Load from a directory saved by this class or by ``transformers`` (e.g. a dandelin/vilt-* snapshot).

        Args:
            pretrained_model_name_or_path: A directory, ``bundled`` or a hub id (see :mod:`vilt.hub`).
                It needs preprocessor_config.json, and tokenizer.json or vocab.txt.
            **kwargs: Image-processor and tokenizer settings that override the saved ones (``size``,
                ``model_max_length``...), and the hub options (``revision``, ``cache_dir``,
                ``local_files_only``...).
        """
        hub, settings = split_hub_options(kwargs)
        unknown = set(settings) - _IMAGE_SETTINGS - _TOKENIZER_SETTINGS
        if unknown:
            raise TypeError(f"ViltProcessor.from_pretrained got unknown arguments {sorted(unknown)}")
        image_settings = {key: value for key, value in settings.items() if key in _IMAGE_SETTINGS}
        tokenizer_settings = {key: value for key, value in settings.items() if key in _TOKENIZER_SETTINGS}
        return cls(
            ViltImageProcessor.from_pretrained(pretrained_model_name_or_path, **image_settings, **hub),
            ViltTokenizer.from_pretrained(pretrained_model_name_or_path, **tokenizer_settings, **hub),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_processor={self.image_processor!r}, tokenizer={self.tokenizer!r})"
        )


def _name_the_processor_class(config_file: Path) -> None:
    """Add ``"processor_class": "ViltProcessor"`` to a JSON config (what transformers' Auto classes read)."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["processor_class"] = ViltProcessor.__name__
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
