"""Evaluation metrics: the official VQA answer normalisation and accuracy, accuracy, and retrieval recall@K
by exhaustive re-ranking."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------- VQA answers

_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# the official evaluation maps every apostrophe-less spelling of these to the spelling shown
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've "
    "she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd there'd've "
    "there're there's they'd they'd've they'll they're they've twas wasn't we'd've we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll "
    "why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've"
).split()


def _contraction_table() -> dict[str, str]:
    """Every spelling with some apostrophes dropped -> the full contraction (the official table)."""
    table: dict[str, str] = {}
    for word in _CONTRACTED:
        pieces = word.split("'")
        for mask in range(2 ** (len(pieces) - 1) - 1):  # which apostrophes to keep; not all of them
            spelled = pieces[0]
            for i, piece in enumerate(pieces[1:]):
                spelled += ("'" if mask >> i & 1 else "") + piece
            table[spelled] = word
    return table


_CONTRACTIONS = _contraction_table()


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation: punctuation, number words, articles, contractions.

    Args:
        answer: a raw answer string, e.g. "Two dogs." -> "2 dogs".
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy of one prediction against the annotators' answers.

    For each annotator, min(1, matches among the other annotators / 3); averaged over annotators (the
    10-choose-9 subsets). The prediction is always normalised; the annotators' answers are normalised
    when they disagree, as in the official evaluation script.

    Args:
        prediction: the predicted answer string.
        answers: the raw annotator answers (VQAv2: 10).
    """
    if not answers:
        raise ValueError("the VQA accuracy needs the annotators' answers")
    prediction = normalize_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(a == prediction for a in others) / 3))
    return sum(scores) / len(scores)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the labels.

    Args:
        predictions, labels: (N,) class ids.
    """
    if predictions.shape != labels.shape or predictions.numel() == 0:
        raise ValueError(
            f"need equal, non-empty shapes, got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    return (predictions == labels).float().mean().item()


def recall_at_k(
    scores: torch.Tensor, text_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image->text (tr) and text->image (ir) recall@K from a full score matrix.

    Args:
        scores: (N_img, N_txt) matching score of every image with every text.
        text_image: (N_txt,) the index of each text's image.
        ks: the K values.

    Returns:
        ``{"tr_r1": ..., "ir_r1": ..., ...}``: tr: an image is a hit when any of its texts is in its
        top K texts; ir: a text is a hit when its image is in its top K images.
    """
    n_img, n_txt = scores.shape
    truth = text_image.view(1, n_txt) == torch.arange(n_img).view(n_img, 1)  # (N_img, N_txt)
    out = {}
    for k in ks:
        top_texts = scores.topk(min(k, n_txt), dim=1).indices  # (N_img, k)
        out[f"tr_r{k}"] = truth.gather(1, top_texts).any(1).float().mean().item()
        top_images = scores.topk(min(k, n_img), dim=0).indices  # (k, N_txt)
        out[f"ir_r{k}"] = truth.gather(0, top_images).any(0).float().mean().item()
    return out


MATCH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def retrieval_scores(
    model: Any,
    pixel_values: Sequence[torch.Tensor],
    text_inputs: dict[str, torch.Tensor],
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Score every (image, text) pair: each image is embedded once (``model.embed_images``), then paired
    with every batch of texts (``model.match_scores``).

    Args:
        model: a ``ViltForImageAndTextRetrieval`` (score = ``rank_output``) or a
            ``ViltForImageTextMatching`` (score = the "match" logit).
        pixel_values: one (C, H, W) tensor per image.
        text_inputs: the tokenised texts (input_ids, attention_mask, token_type_ids), (N_txt, Lt) each.
        batch_size: texts per forward pass.
        progress: show a tqdm bar over the images.

    Returns:
        (N_img, N_txt) scores.
    """
    device = model.device
    rows = []
    for pixels in tqdm(pixel_values, desc="retrieval", disable=not progress, leave=False):
        image = model.embed_images(pixels[None].to(device))  # one image, every pixel real
        row = []
        for start in range(0, len(text_inputs["input_ids"]), batch_size):
            text = [text_inputs[k][start : start + batch_size].to(device) for k in MATCH_INPUTS]
            row.append(model.match_scores(*text, image))  # (n,)
        rows.append(torch.cat(row))
    return torch.stack(rows).float().cpu()  # (N_img, N_txt)
