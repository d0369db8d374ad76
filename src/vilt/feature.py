"""``BatchFeature``: what the processors return, a dict of model inputs with attribute access."""

from __future__ import annotations

from typing import Any

import torch


class BatchFeature(dict):
    """The output of the processors: a dict that also allows attribute access (``batch.pixel_values``).

    ``to()`` moves the tensors to a device and casts only floating-point tensors to a dtype, so
    ``batch.to("cuda", torch.bfloat16)`` keeps ``input_ids`` and ``pixel_mask`` integer.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Apply ``torch.Tensor.to(*args, **kwargs)`` to the tensors, in place.

        Args:
            *args: Arguments of ``torch.Tensor.to``, e.g. a device, a dtype, or both.
            **kwargs: Keyword arguments of ``torch.Tensor.to`` (``device``, ``dtype``, ``non_blocking``).

        Returns:
            This batch, with floating-point tensors moved and cast and the other tensors only moved.
        """
        device = kwargs.get("device")
        if device is None:
            device = next((a for a in args if isinstance(a, (str, int, torch.device))), None)
        for key, value in self.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.is_floating_point():
                self[key] = value.to(*args, **kwargs)
            elif device is not None:
                self[key] = value.to(device=device, non_blocking=kwargs.get("non_blocking", False))
        return self
