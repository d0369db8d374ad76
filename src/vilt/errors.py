"""The one error type for input a caller can fix.

Every check of user input (images, texts, batches, configs, checkpoints, request fields) raises
:class:`ViltInputError`. It is a ``ValueError``, so ``except ValueError`` keeps working, and the server
maps exactly this type to a 4xx answer: anything else that escapes is a bug, answered 500 and logged.
"""

from __future__ import annotations


class ViltInputError(ValueError):
    """An input the caller can fix; the message says what was wrong and how to fix it."""
