"""Word-patch alignment by optimal transport (ViLT paper section 3.2; original code's ``objectives.py``).

* :func:`cosine_cost`: the transport cost between text and image features, 1 - cosine similarity;
* :func:`ipot`: the transport plan by inexact proximal-point optimal transport (Xie et al. 2020);
* :func:`wpa_loss`: the word-patch alignment loss of pretraining, built from the two.

Used by the pretraining head (:class:`vilt.heads.ViltForPreTraining`) and by the IPOT heatmaps of
:mod:`vilt.explain` (which use the demo's constants instead of pretraining's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WPA_WEIGHT = 0.1
IPOT_BETA = 0.5  # pretraining's constants
IPOT_ITERATIONS = 50


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
