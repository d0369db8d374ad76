"""The limits and batching of a server (standard library only, so ``vilt serve --help`` stays light)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one server.

    Attributes:
        max_batch_size: the most requests in one forward pass.
        max_wait_ms: how long a request waits for others to share its forward pass.
        max_queue: requests waiting per task beyond which new ones get 503.
        timeout_s: the longest a request waits for its answer (queue plus inference), then 504.
        max_body_bytes: the largest request body (all uploads together), else 413.
        max_image_pixels: the most pixels (width x height) per image, checked before decoding, else 413.
        api_key: when set, the ``X-API-Key`` every ``/v1`` and ``/metrics`` request must carry.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096
    api_key: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(
                f"max_wait_ms must be >= 0 and timeout_s > 0, got {self.max_wait_ms}, {self.timeout_s}"
            )

    def limits(self) -> dict[str, Any]:
        """The limits a client may want to know (everything but the key)."""
        return {key: value for key, value in asdict(self).items() if key != "api_key"}
