"""Fixtures shared by the test modules. The tiny model config lives in tiny.py, test inputs in
model_inputs.py, saved tiny models in tiny_models.py and toy training data in train_toy.py."""

from __future__ import annotations

import socket
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
def fast_path_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's whole-layer probe finds it faster, without timing anything: tests of what the fast
    path computes must not depend on which way a timing on a busy machine went."""
    from vilt import layers

    monkeypatch.setattr(layers, "fast_pays", lambda *_: True)


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


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The addresses of every TCP connection this process opens (or tries to) during the test, in order.
    httpx (images, huggingface_hub) and the hub probe all connect through ``socket.create_connection``."""
    tried: list[tuple[str, int]] = []
    create_connection = socket.create_connection

    def counted(address, *args, **kwargs):
        tried.append((address[0], address[1]))
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    return tried
