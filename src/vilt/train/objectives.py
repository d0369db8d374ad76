"""Training objectives of ViLT (constants from the original code, see original-vilt.md §2-§3).

Fine-tuning losses live in the task heads (:mod:`vilt.heads`) and are used as they are:

* VQA: BCE-with-logits x num_labels on soft scores (``ViltForQuestionAnswering``);
* NLVR2: cross-entropy over the pair classifier (``ViltForImagesAndTextClassification``);
* retrieval: cross-entropy over 1 positive + k negatives per image (``ViltForImageAndTextRetrieval``).

Pretraining (this module) sums three losses over two passes, in :class:`ViltForPreTraining`:

* MLM: whole-word masking of 15% of the text (80% [MASK] / 10% random / 10% kept), true image;
* ITM: half of the batch gets a random other image; 2-way cross-entropy on the pooled output;
* WPA: 0.1 x the IPOT optimal-transport distance between words and patches (positives minus negatives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..configuration import ViltConfig
from ..heads import ViltITMHead, ViltMLMHead
from ..modeling import ModelOutput, ViltModel, ViltPreTrainedModel

MLM_PROBABILITY = 0.15
WPA_WEIGHT = 0.1
IPOT_BETA = 0.5
IPOT_ITERATIONS = 50

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


# ----------------------------------------------------------------------------- word-patch alignment


def cosine_cost(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(B, M, N) cost 1 - cosine similarity between M text and N image features (L2-normalise eps 1e-5)."""
    text = F.normalize(text, p=2, dim=-1, eps=1e-5)
    image = F.normalize(image, p=2, dim=-1, eps=1e-5)
    return 1 - text @ image.transpose(1, 2)


@torch.no_grad()
def ipot(
    cost: torch.Tensor,
    text_pad: torch.Tensor,
    image_pad: torch.Tensor,
    beta: float = IPOT_BETA,
    iterations: int = IPOT_ITERATIONS,
) -> torch.Tensor:
    """Inexact proximal optimal transport (Xie et al.) with one inner step, as the original code.

    Args:
        cost: (B, M, N) transport cost, 0 on padded pairs.
        text_pad: (B, M) True on padded text positions.
        image_pad: (B, N) True on padded image positions.
        beta: proximal step size.
        iterations: outer iterations.

    Returns:
        the transport plan (B, N, M), 0 on padded pairs.
    """
    b, m, n = cost.shape
    joint_pad = (text_pad.unsqueeze(-1) | image_pad.unsqueeze(-2)).transpose(1, 2)  # (B, N, M)
    text_len = (~text_pad).sum(1).to(cost.dtype).view(b, 1, 1)
    image_len = (~image_pad).sum(1).to(cost.dtype).view(b, 1, 1)
    sigma = (1 / text_len.view(b, 1)).expand(b, m).masked_fill(text_pad, 0)  # (B, M)
    plan = torch.ones(b, n, m, dtype=cost.dtype, device=cost.device).masked_fill(joint_pad, 0)
    kernel = torch.exp(-cost.transpose(1, 2) / beta).masked_fill(joint_pad, 0)  # (B, N, M)
    text_big = (text_pad.to(cost.dtype) * 1e4).unsqueeze(1)  # (B, 1, M)
    image_big = (image_pad.to(cost.dtype) * 1e4).unsqueeze(1)  # (B, 1, N)
    sigma = sigma.reshape(b, m, 1)
    for _ in range(iterations):
        q = kernel * plan  # (B, N, M)
        delta = 1 / (image_len * (q @ sigma).view(b, 1, n) + image_big)  # (B, 1, N)
        sigma = 1 / (text_len * (delta @ q) + text_big)  # (B, 1, M)
        plan = delta.view(b, n, 1) * q * sigma
        sigma = sigma.view(b, m, 1)
    return plan.masked_fill(joint_pad, 0)


def wpa_loss(
    hidden: torch.Tensor,
    text_mask: torch.Tensor,
    image_mask: torch.Tensor,
    itm_labels: torch.Tensor,
) -> torch.Tensor:
    """Word-patch alignment: 0.1 x (sum of OT distances of matched pairs - of unmatched pairs) / B.

    Computed in float32 outside autocast; the plan is found without gradient, which flows through the cost.

    Args:
        hidden: (B, Lt + 1 + Li, D) last hidden states of the ITM pass.
        text_mask: (B, Lt) 1 on real text tokens; [CLS] and the last real token ([SEP]) are left out.
        image_mask: (B, 1 + Li) 1 on the image CLS and real patches; the image CLS is left out.
        itm_labels: (B,) 1 where the image matches the text.
    """
    lt = text_mask.shape[1]
    with torch.autocast(hidden.device.type, enabled=False):
        text_keep = text_mask.bool().clone()
        text_keep[torch.arange(len(text_keep)), text_keep.sum(1) - 1] = False  # the [SEP]
        text_keep[:, 0] = False  # the [CLS]
        image_keep = image_mask.bool().clone()
        image_keep[:, 0] = False  # the image CLS
        text_pad, image_pad = ~text_keep, ~image_keep
        cost = cosine_cost(hidden[:, :lt].float(), hidden[:, lt:].float())  # (B, M, N)
        cost = cost.masked_fill(text_pad.unsqueeze(-1) | image_pad.unsqueeze(-2), 0)
        plan = ipot(cost.detach(), text_pad, image_pad)  # (B, N, M)
        distance = (cost * plan.transpose(1, 2)).sum(dim=(1, 2))  # (B,) trace(C T)
        signed = torch.where(itm_labels.to(distance.device) == 1, distance, -distance)
        return WPA_WEIGHT * signed.sum() / len(distance)


# ----------------------------------------------------------------------------- the pretraining model


@dataclass
class PreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mlm + itm (+ wpa)
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    wpa_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # (B, Lt, vocab)
    itm_logits: torch.Tensor | None = None  # (B, 2)


class ViltForPreTraining(ViltPreTrainedModel):
    """ViLT with the MLM head (``mlm_score``) and the ITM head (``itm_score``), trained on their sum.

    Its weights load into every task head (``ViltForQuestionAnswering.from_pretrained(dir)`` keeps
    the ``vilt.*`` weights), and its heads into ``ViltForMaskedLM`` / ``ViltForImageTextMatching``.

    Args:
        config: the model config.
        use_wpa: add the word-patch alignment loss.
    """

    def __init__(self, config: ViltConfig, use_wpa: bool = True) -> None:
        super().__init__(config)
        self.use_wpa = use_wpa
        self.vilt = ViltModel(config)
        self.mlm_score = ViltMLMHead(config)
        self.itm_score = ViltITMHead(config)
        self.post_init()

    def forward(
        self,
        mlm_input_ids: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_pixel_values: torch.Tensor,
        itm_pixel_mask: torch.Tensor,
        itm_labels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """Two passes: masked text with the true image (MLM), then the unmasked text with the ITM images.

        Args:
            mlm_input_ids, mlm_labels: (B, Lt) from :func:`mask_whole_words`.
            itm_pixel_values, itm_pixel_mask: (B, C, H, W), (B, H, W): the true image where
                ``itm_labels`` is 1, another image where it is 0.
            itm_labels: (B,) from :func:`draw_itm_labels`.
            input_ids, attention_mask, token_type_ids: (B, Lt) the unmasked text.
            pixel_values, pixel_mask: the true images.
        """
        text = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        mlm_out = self.vilt(input_ids=mlm_input_ids, pixel_values=pixel_values, pixel_mask=pixel_mask, **text)
        mlm_logits = self.mlm_score(mlm_out.last_hidden_state[:, : input_ids.shape[1]])  # (B, Lt, vocab)
        mlm_loss = F.cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]), mlm_labels.reshape(-1))
        itm_out = self.vilt(
            input_ids=input_ids, pixel_values=itm_pixel_values, pixel_mask=itm_pixel_mask, **text
        )
        itm_logits = self.itm_score(itm_out.pooler_output)  # (B, 2)
        itm_loss = F.cross_entropy(itm_logits.float(), itm_labels)
        loss = mlm_loss + itm_loss
        wpa = None
        if self.use_wpa:
            wpa = wpa_loss(itm_out.last_hidden_state, attention_mask, itm_out.image_mask, itm_labels)
            loss = loss + wpa
        return PreTrainingOutput(loss, mlm_loss, itm_loss, wpa, mlm_logits, itm_logits)


def pretraining_inputs(
    batch: dict[str, Any], spec: MaskingSpec, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A collated pretraining batch (:class:`vilt.train.data.Collator`, task "pretrain") -> the keyword
    arguments of :meth:`ViltForPreTraining.forward`: masked text, ITM labels and the ITM images.

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


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask", "labels")


def model_inputs(
    task: str, batch: dict[str, Any], spec: MaskingSpec | None = None
) -> dict[str, torch.Tensor]:
    """The keyword arguments of the task model's forward for one collated batch (loss included).

    Args:
        task: "vqa", "nlvr2", "retrieval" or "pretrain".
        batch: from :class:`vilt.train.data.Collator`.
        spec: the masking spec (pretrain only).
    """
    if task == "pretrain":
        if spec is None:
            raise ValueError("pretraining needs a MaskingSpec for whole-word masking")
        return pretraining_inputs(batch, spec)
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}
