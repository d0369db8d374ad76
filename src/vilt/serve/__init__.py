"""HTTP serving: ``vilt serve`` runs a batched FastAPI server and a web page around a ViLT model.

Needs the ``serve`` extra (``pip install 'vilt[serve]'``: fastapi, fastapi-offline, uvicorn,
python-multipart, prometheus-client). Nothing here is imported by ``import vilt``; :func:`create_app`,
:func:`load_app` and :func:`load_pipelines` load the server modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_app": "vilt.serve.app",
    "load_app": "vilt.serve.app",
    "ConnectionLimits": "vilt.serve.settings",
    "ServeSettings": "vilt.serve.settings",
    "load_pipelines": "vilt.serve.tasks",
}
SERVE_EXTRA_HINT = "serving needs the serve extra: pip install 'vilt[serve]'"

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vilt.serve' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        if err.name in (
            "fastapi",
            "fastapi_offline",
            "starlette",
            "uvicorn",
            "multipart",
            "python_multipart",
            "prometheus_client",
        ):
            raise ImportError(f"{SERVE_EXTRA_HINT} ({err.name} is missing)") from err
        raise
    globals()[name] = value
    return value
