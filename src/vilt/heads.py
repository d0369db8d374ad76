"""Task heads on top of :class:`vilt.modeling.ViltModel`, with the reference's names and losses.

| class | head | input | loss with ``labels`` |
|---|---|---|---|
| ViltForQuestionAnswering | classifier MLP | pooled text [CLS] | BCE-with-logits mean x num_labels (soft VQA scores) |
| ViltForMaskedLM | mlm_score | text tokens | cross-entropy, ignore_index -100 |
| ViltForImagesAndTextClassification | classifier MLP on n concatenated pools | one pass per image | cross-entropy |
| ViltForImageAndTextRetrieval | rank_output | pooled | cross-entropy over each image's candidate texts |
| ViltForTokenClassification | classifier | text tokens | cross-entropy |
| ViltForImageTextMatching | itm_score.fc (2-way) | pooled | cross-entropy |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .alignment import wpa_loss
from .configuration import ViltConfig
from .errors import ViltInputError
from .modeling import ImageTokens, ModelOutput, ViltModel, ViltModelOutput, ViltPreTrainedModel, activation

# ----------------------------------------------------------------------------- outputs


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar MLM loss
    logits: torch.Tensor | None = None  # (B, Lt, vocab_size)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar loss
    logits: torch.Tensor | None = None  # (B, num_labels), or (B, 1) for retrieval
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ViltForImagesAndTextClassificationOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar cross-entropy
    logits: torch.Tensor | None = None  # (B, num_labels)
    hidden_states: list[tuple[torch.Tensor, ...]] | None = None  # one tuple per image
    attentions: list[tuple[torch.Tensor, ...]] | None = None  # one tuple per image


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar cross-entropy
    logits: torch.Tensor | None = None  # (B, Lt, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def _classifier(width: int, num_labels: int) -> nn.Sequential:
    """The reference's 2-layer MLP head; its LayerNorm keeps PyTorch's default eps 1e-5."""
    return nn.Sequential(
        nn.Linear(width, width * 2), nn.LayerNorm(width * 2), nn.GELU(), nn.Linear(width * 2, num_labels)
    )


def _wide_classifier(width: int, num_labels: int) -> nn.Sequential:
    """The NLVR2 head: like :func:`_classifier` but ``width`` wide throughout."""
    return nn.Sequential(
        nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, num_labels)
    )


class _HeadModel(ViltPreTrainedModel):
    """A ViltModel under ``self.vilt`` plus a head. Subclasses define :meth:`head` (and the output
    class); the shared :meth:`forward` runs the encoder, the head and the loss."""

    add_pooling_layer = True
    output_class: type[ModelOutput] = SequenceClassifierOutput

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.vilt = ViltModel(config, add_pooling_layer=self.add_pooling_layer)

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss) from the encoder output."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the model; arguments as :meth:`ViltModel.forward`, plus ``labels`` (see the class). Other
        keyword arguments are accepted and ignored, as transformers does (e.g. ``num_items_in_batch``)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            image_embeds=image_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        text = input_ids if input_ids is not None else inputs_embeds
        assert text is not None  # self.vilt raised unless exactly one was given
        text_length = text.shape[1]
        logits, loss = self.head(out, labels, text_length)
        output = self.output_class(loss, logits, out.hidden_states, out.attentions)  # type: ignore[call-arg]
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------- VQA


class ViltForQuestionAnswering(_HeadModel):
    """Visual question answering as multi-label classification over an answer vocabulary."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = _classifier(config.hidden_size, config.num_labels)
        self.post_init()

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``labels``: (B, num_labels) float soft scores in [0, 1] (VQA: 0.3/0.6/0.9/1.0)."""
        logits = self.classifier(out.pooler_output)  # (B, num_labels)
        if labels is None:
            return logits, None
        if labels.shape != logits.shape:
            raise ViltInputError(
                f"labels must be soft scores of shape {tuple(logits.shape)} (batch, num_labels), got {tuple(labels.shape)}"
            )
        return logits, F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * labels.shape[1]


# ----------------------------------------------------------------------------- masked LM


class ViltPredictionHeadTransform(nn.Module):
    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class ViltMLMHead(nn.Module):
    """transform -> decoder. The decoder bias is ``decoder.bias`` (the v5 key); ``bias`` aliases it
    so that code written for the v4 layout (``mlm_score.bias``) keeps working."""

    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.transform = ViltPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    @property
    def bias(self) -> nn.Parameter:
        return self.decoder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # (B, Lt, vocab)


class ViltForMaskedLM(_HeadModel):
    """Masked language modelling over the text tokens (the pretraining MLM objective)."""

    output_class = MaskedLMOutput
    # the decoder shares the word embeddings when config.tie_word_embeddings is on
    _tied_weights_keys = {
        "mlm_score.decoder.weight": "vilt.embeddings.text_embeddings.word_embeddings.weight"
    }

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.mlm_score = ViltMLMHead(config)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.mlm_score.decoder.weight = self.vilt.embeddings.text_embeddings.word_embeddings.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.mlm_score.decoder = new_embeddings

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``labels``: (B, Lt) token ids to predict, -100 where there is nothing to predict."""
        assert out.last_hidden_state is not None  # ViltModel always returns it
        logits = self.mlm_score(out.last_hidden_state[:, :text_length])  # (B, Lt, vocab)
        if labels is None:
            return logits, None
        return logits, F.cross_entropy(
            logits.reshape(-1, self.config.vocab_size), labels.reshape(-1).to(logits.device)
        )


# ----------------------------------------------------------------------------- NLVR2


class ViltForImagesAndTextClassification(_HeadModel):
    """One text, ``config.num_images`` images (NLVR2: 2). Each image gets its own full pass with
    modality id i + 1; the pooled outputs are concatenated and classified."""

    def __init__(self, config: ViltConfig) -> None:
        config.validate_num_images()
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = _wide_classifier(config.hidden_size * config.num_images, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ViltForImagesAndTextClassificationOutput | tuple[Any, ...]:
        """``pixel_values``: (B, n, C, H, W) with ``pixel_mask`` (B, n, H, W); ``labels``: (B,) class ids.

        With ``return_dict=False`` the tuple is the reference's: ``(loss, logits, hidden_states,
        attentions)`` without ``loss`` when no labels are given, and with None for the hidden states and
        attentions not asked for. Other keyword arguments are accepted and ignored, as transformers does.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if pixel_values is not None and pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)  # (B, 1, C, H, W)
        if image_embeds is not None and image_embeds.dim() == 3:
            image_embeds = image_embeds.unsqueeze(1)  # (B, 1, Li, D)
        images = pixel_values if pixel_values is not None else image_embeds
        if images is None:
            raise ViltInputError("pass pixel_values (B, num_images, C, H, W) or image_embeds")
        num_images = images.shape[1]
        if num_images != self.config.num_images:
            raise ViltInputError(
                f"this model compares {self.config.num_images} images per text, got {num_images} "
                f"(pixel_values shape {tuple(images.shape)})"
            )
        if pixel_mask is not None and pixel_mask.dim() == 3 and pixel_values is not None:
            pixel_mask = pixel_mask.unsqueeze(1)  # (B, 1, H, W)
        pooled, hidden_states, attentions = [], [], []
        for i in range(num_images):
            out = self.vilt(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                pixel_values=pixel_values[:, i] if pixel_values is not None else None,
                pixel_mask=pixel_mask[:, i] if pixel_mask is not None else None,
                head_mask=head_mask,
                inputs_embeds=inputs_embeds,
                image_embeds=image_embeds[:, i] if image_embeds is not None else None,
                image_token_type_idx=i + 1,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            pooled.append(out.pooler_output)
            hidden_states.append(out.hidden_states)
            attentions.append(out.attentions)
        logits = self.classifier(torch.cat(pooled, dim=-1))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        output = ViltForImagesAndTextClassificationOutput(
            loss,
            logits,
            hidden_states if hidden_states[0] is not None else None,
            attentions if attentions[0] is not None else None,
        )
        if return_dict:
            return output
        tail = (output.logits, output.hidden_states, output.attentions)  # None entries kept, as the reference
        return tail if loss is None else (loss, *tail)


# ----------------------------------------------------------------------------- retrieval and ITM


class _MatchScoring(_HeadModel):
    """A head whose logit ``match_column`` scores how well the text matches the image, with the scoring of
    many texts against images embedded once (:meth:`embed_images`, :meth:`match_scores`)."""

    match_column: int

    def embed_images(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> ImageTokens:
        """The image tokens of a pixel batch (see :meth:`vilt.modeling.ViltModel.embed_images`)."""
        return self.vilt.embed_images(pixel_values, pixel_mask)

    def match_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        images: ImageTokens,
    ) -> torch.Tensor:
        """(B,) match score of each text (B, Lt) with its image: the images' tokens have batch B, or 1
        for one image scored against every text (``images.select(rows)`` pairs them otherwise). Equals
        the full forward's score logit for the same pairs."""
        embeddings, mask = images.embeddings, images.mask  # (B or 1, 1 + Li, D), (B or 1, 1 + Li)
        if embeddings.shape[0] == 1:  # one image for every text
            n = input_ids.shape[0]
            embeddings, mask = embeddings.expand(n, -1, -1), mask.expand(n, -1)
        out = self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            image_embeds=embeddings,
            pixel_mask=mask,
            return_dict=True,
        )
        logits, _ = self.head(out, None, input_ids.shape[1])
        return logits[:, self.match_column]  # (B,)


class ViltForImageAndTextRetrieval(_MatchScoring):
    """Image-text retrieval: one matching score per (image, text) pair.

    Training (unlike the reference, which raises): lay the batch out as ``num_groups`` groups of
    ``k`` consecutive candidate pairs, the same image with k texts, and pass ``labels`` (num_groups,)
    with the index of the true text in each group (the original recipe: 1 positive + 15 random
    negatives, positive first, so labels are zeros). The loss is the cross-entropy over each
    group's k scores. :meth:`match_scores` gives ``rank_output`` for images embedded once.
    """

    match_column = 0

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.rank_output = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.rank_output(out.pooler_output)  # (B, 1)
        return logits, None if labels is None else group_ranking_loss(logits[:, 0], labels)


def group_ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over groups of consecutive candidates.

    Args:
        scores: (num_groups * k,) one score per pair, grouped by image.
        labels: (num_groups,) index of the positive candidate within each group.
    """
    labels = labels.reshape(-1).to(scores.device).long()
    groups = labels.numel()
    if groups == 0 or scores.numel() % groups:
        raise ViltInputError(
            f"retrieval labels give {groups} groups but the batch has {scores.numel()} pairs; lay the batch out "
            "as groups of k consecutive (image, candidate text) pairs and pass one label per group"
        )
    k = scores.numel() // groups
    if bool((labels < 0).any()) or bool((labels >= k).any()):
        raise ViltInputError(
            f"retrieval labels must index a candidate in each group of {k}, got {labels.tolist()}"
        )
    return F.cross_entropy(scores.view(groups, k), labels)  # (groups, k) scores


class ViltITMHead(nn.Module):
    def __init__(self, config: ViltConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (B, 2)


class ViltForImageTextMatching(_MatchScoring):
    """Image-text matching (the pretraining ITM head, ``itm_score.fc``): logit 1 means "matches".

    The reference has no such class (its converter drops the head); the original pretrained
    checkpoint carries it, and its "match" logit is the paper's zero-shot retrieval score
    (:meth:`match_scores`).
    """

    match_column = 1

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.itm_score = ViltITMHead(config)
        self.post_init()

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``labels``: (B,) 1 where the text matches the image, 0 where it does not."""
        logits = self.itm_score(out.pooler_output)  # (B, 2)
        return logits, None if labels is None else F.cross_entropy(
            logits, labels.reshape(-1).long().to(logits.device)
        )


# ----------------------------------------------------------------------------- token classification


class ViltForTokenClassification(_HeadModel):
    """Per-text-token classification (no pooler, as in the reference)."""

    add_pooling_layer = False
    output_class = TokenClassifierOutput

    def __init__(self, config: ViltConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(
        self, out: ViltModelOutput, labels: torch.Tensor | None, text_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``labels``: (B, Lt) class ids, -100 where there is nothing to predict."""
        logits = self.classifier(self.dropout(out.last_hidden_state)[:, :text_length])  # (B, Lt, num_labels)
        if labels is None:
            return logits, None
        return logits, F.cross_entropy(
            logits.reshape(-1, self.num_labels), labels.reshape(-1).to(logits.device)
        )


MODEL_CLASSES: dict[str, type[ViltPreTrainedModel]] = {
    "ViltModel": ViltModel,
    "ViltForQuestionAnswering": ViltForQuestionAnswering,
    "ViltForMaskedLM": ViltForMaskedLM,
    "ViltForImagesAndTextClassification": ViltForImagesAndTextClassification,
    "ViltForImageAndTextRetrieval": ViltForImageAndTextRetrieval,
    "ViltForTokenClassification": ViltForTokenClassification,
    "ViltForImageTextMatching": ViltForImageTextMatching,
}


# ----------------------------------------------------------------------------- pretraining


@dataclass
class PreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mlm + itm (+ wpa)
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    wpa_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # (B, Lt, vocab)
    itm_logits: torch.Tensor | None = None  # (B, 2)


class ViltForPreTraining(ViltPreTrainedModel):
    """ViLT with the MLM head (``mlm_score``) and the ITM head (``itm_score``), trained on their sum
    (plus the word-patch alignment loss, :func:`vilt.alignment.wpa_loss`).

    Its weights load into every task head (``ViltForQuestionAnswering.from_pretrained(dir)`` keeps
    the ``vilt.*`` weights), and its heads into ``ViltForMaskedLM`` / ``ViltForImageTextMatching``.
    :func:`vilt.train.objectives.pretraining_inputs` makes its inputs from a batch.

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
            mlm_input_ids, mlm_labels: (B, Lt) the whole-word-masked text and its labels (-100 where
                nothing is predicted).
            itm_pixel_values, itm_pixel_mask: (B, C, H, W), (B, H, W): the true image where
                ``itm_labels`` is 1, another image where it is 0.
            itm_labels: (B,) 1 where the ITM image matches the text.
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
