"""The optimizer and the learning-rate schedule of the original recipe."""

from __future__ import annotations

import torch

from ..modeling import ViltPreTrainedModel


def build_optimizer(
    model: ViltPreTrainedModel,
    lr: float,
    weight_decay: float,
    beta2: float,
    head_lr_mult: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with the original's four groups: (encoder | head) x (decayed | no decay on biases and norms).

    Args:
        model: a task model (its encoder is ``vilt.*``, everything else is the head).
        lr: the encoder's peak learning rate; the head's is ``lr * head_lr_mult``.
        weight_decay: the decay of the decayed groups.
        beta2: AdamW's beta2 (beta1 is 0.9).
        head_lr_mult: the head's learning-rate multiplier.
        device: where the model is (the fused kernel runs on CPU and CUDA).
    """
    no_decay = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((not name.startswith("vilt."), name in no_decay), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": lr * (head_lr_mult if head else 1),
            "weight_decay": 0.0 if nd else weight_decay,
        }
        for (head, nd), params in sorted(groups.items())
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, beta2), eps=1e-8, fused=fused)


def warmup_steps(warmup: float, total: int) -> int:
    """Warmup steps from ``--warmup``: a fraction of ``total`` when below 1, else a count."""
    return int(warmup * total) if warmup < 1 else int(warmup)


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
