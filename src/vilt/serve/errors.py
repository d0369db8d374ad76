"""The one error type the server raises on purpose: an HTTP status and a message for the client, and
how a message quotes what the client sent."""

from __future__ import annotations

SHOWN_CHARACTERS = 40  # the most characters of anything the client sent that an error message repeats


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters: a message never echoes more
    than a short piece of the input, however large the input."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class APIError(Exception):
    """An error the client caused or must know about; answered as ``{"error": message}``.

    Args:
        status_code: the HTTP status (4xx for bad requests, 503/504 for overload and timeouts).
        message: one sentence saying what was wrong and how to fix it.
        headers: extra response headers, e.g. ``Retry-After``.
    """

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}
