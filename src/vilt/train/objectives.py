"""Training objectives of ViLT (constants from the original code, see original-vilt.md §2-§3).

Fine-tuning losses live in the task heads (:mod:`vilt.heads`) and are used as they are:

* VQA: BCE-with-logits x num_labels on soft scores (``ViltForQuestionAnswering``);
* NLVR2: cross-entropy over the pair classifier (``ViltForImagesAndTextClassification``);
* retrieval: cross-entropy over 1 positive + k negatives per image (``ViltForImageAndTextRetrieval``).

Pretraining sums three losses over two passes, in :class:`vilt.heads.ViltForPreTraining`; this module
draws what they need from each batch (:func:`pretraining_inputs`):

* MLM: whole-word masking of 15% of the text (80% [MASK] / 10% random / 10% kept), true image;
* ITM: half of the batch gets a random other image; 2-way cross-entropy on the pooled output;
* WPA: 0.1 x the IPOT optimal-transport distance between words and patches (positives minus negatives),
  computed by the model from the ITM pass (:func:`vilt.alignment.wpa_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MLM_PROBABILITY = 0.15

# ----------------------------------------------------------------------------- whole-word masking


@dataclass
class MaskingSpec:
    """What whole-word masking needs to know about the tokenizer.

    Attributes:
        mask_token_id: id of ``[MASK]``.
        special_ids: ids never masked ([CLS], [SEP], [PAD], ...).
        continuation: (vocab_size,) bool, True for "##" word pieces (they join the previous word).
    """

    mask_token_id: int
    special_ids: torch.Tensor
    continuation: torch.Tensor

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> MaskingSpec:
        """Build the spec from a :class:`vilt.tokenization.ViltTokenizer`."""
        vocab = tokenizer.get_vocab()
        continuation = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
        for token, index in vocab.items():
            continuation[index] = token.startswith("##")
        return cls(tokenizer.mask_token_id, torch.tensor(tokenizer.all_special_ids), continuation)


def _word_spans(ids: list[int], candidates: list[bool], continuation: torch.Tensor) -> list[list[int]]:
    """Positions of each whole word among the candidate positions ("##" pieces join the previous word)."""
    words: list[list[int]] = []
    for pos, (token, ok) in enumerate(zip(ids, candidates)):
        if not ok:
            continue
        if words and bool(continuation[token]) and words[-1][-1] == pos - 1:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


def mask_whole_words(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    spec: MaskingSpec,
    probability: float = MLM_PROBABILITY,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking: pick whole words until ``probability`` of each text's tokens are chosen,
    then replace 80% of the chosen tokens with [MASK], 10% with a random token and keep 10%.

    Args:
        input_ids: (B, Lt) token ids.
        attention_mask: (B, Lt) 1 on real tokens.
        spec: the tokenizer facts (:class:`MaskingSpec`).
        probability: share of the real tokens to predict (at least one per text).
        generator: RNG (default: torch's global RNG).

    Returns:
        masked input_ids (B, Lt) and labels (B, Lt): the original id where chosen, -100 elsewhere.
    """
    candidates = (attention_mask == 1) & ~torch.isin(input_ids, spec.special_ids)  # (B, Lt)
    chosen = torch.zeros_like(candidates)
    for row, (ids, ok) in enumerate(zip(input_ids.tolist(), candidates.tolist())):
        budget = max(1, round(probability * sum(ok)))
        words = _word_spans(ids, ok, spec.continuation)
        for w in torch.randperm(len(words), generator=generator).tolist():
            if chosen[row].sum() + len(words[w]) <= budget:
                chosen[row, words[w]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)  # (B, Lt): 80% mask, 10% random, 10% keep
    random_ids = torch.randint(len(spec.continuation), input_ids.shape, generator=generator)
    masked = torch.where(chosen & (draw < 0.8), torch.full_like(input_ids, spec.mask_token_id), input_ids)
    masked = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, masked)
    return masked, labels


# ----------------------------------------------------------------------------- ITM negatives


def draw_itm_labels(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) ITM labels: exactly floor(B / 2) ones (true image), the rest zeros, randomly placed."""
    labels = torch.zeros(batch_size, dtype=torch.long)
    labels[: batch_size // 2] = 1
    return labels[torch.randperm(batch_size, generator=generator)]


# ----------------------------------------------------------------------------- pretraining inputs


def pretraining_inputs(
    batch: dict[str, Any], spec: MaskingSpec, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A collated pretraining batch (:class:`vilt.train.data.Collator`, task "pretrain") -> the keyword
    arguments of :meth:`vilt.heads.ViltForPreTraining.forward`: masked text, ITM labels and the ITM images.

    Args:
        batch: with input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask and the false images.
        spec: the tokenizer facts for masking.
        generator: RNG (default: torch's global RNG).
    """
    mlm_input_ids, mlm_labels = mask_whole_words(
        batch["input_ids"], batch["attention_mask"], spec, generator=generator
    )
    itm_labels = draw_itm_labels(len(batch["input_ids"]), generator)
    match = itm_labels.bool()
    return {
        "mlm_input_ids": mlm_input_ids,
        "mlm_labels": mlm_labels,
        "itm_labels": itm_labels,
        "itm_pixel_values": torch.where(
            match[:, None, None, None], batch["pixel_values"], batch["false_pixel_values"]
        ),  # (B, C, H, W)
        "itm_pixel_mask": torch.where(match[:, None, None], batch["pixel_mask"], batch["false_pixel_mask"]),
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
        "pixel_values": batch["pixel_values"],
        "pixel_mask": batch["pixel_mask"],
    }
