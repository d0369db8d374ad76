"""Where a job runs: an embedded local Ray by default, a cluster when an address is given.

``connect(None)`` starts a private Ray inside this process (``ray.init(address="local")``), so the same
command works on a laptop; it never joins a cluster by accident (plain ``ray.init()`` would join one
that ``ray start`` left on this machine). ``connect("HOST:PORT")`` (or ``"auto"``, or ``ray://...``)
joins a running cluster. Workers get the same ``vilt`` and model files only if the cluster's nodes have
them: install ``vilt[scale]`` on every node and keep models and images on storage every node reads.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("running on Ray needs the scale extra: pip install 'vilt[scale]'") from err
    return ray


def connect(address: str | None = None, num_cpus: float | None = None) -> Any:
    """Start or join Ray once per process; returns the ``ray`` module.

    Args:
        address: None for an embedded local Ray; a cluster's ``HOST:PORT``, ``auto`` or ``ray://`` address.
        num_cpus: CPUs the embedded Ray offers (default: the machine's); ignored when joining a cluster.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        options.update(address="local", include_dashboard=False, num_cpus=num_cpus)
    else:
        options["address"] = address
    ray.init(**options)
    logger.info("Ray: %s", "embedded, local" if address is None else f"joined {address}")
    return ray


def cluster_cpus() -> float:
    """The CPUs of the Ray cluster this process is connected to."""
    return float(import_ray().cluster_resources().get("CPU", 0.0))
