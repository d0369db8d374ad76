"""Fixtures shared by the test modules. The tiny model config lives in tiny.py, test inputs in
model_inputs.py, saved tiny models in tiny_models.py and toy training data in train_toy.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one torch thread, then restore the thread count. Tiny models run far faster on
    one thread, above all on a busy shared machine. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def packed_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the fast path's cached products (``vilt.layers.PackedProduct``; one entry per call)."""
    from vilt.layers import PackedProduct

    calls: list[int] = []
    original = PackedProduct.__call__

    def counted(self: PackedProduct, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PackedProduct, "__call__", counted)
    return calls
