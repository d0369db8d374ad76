"""What a pipeline runs: the model's source, the class its config names, the backend, the processor.

A model is named as :mod:`vilt.hub` names it (a directory, a hub id, ``bundled``) or given as an
instance. ``model=None`` means the bundled easy-VQA model, for the tasks it does (visual question
answering) only. The class loaded is the checkpoint's own (``config.architectures``), which must have
the task's head; the backend is PyTorch, or an exported graph on onnxruntime or OpenVINO.

The device and precision are resolved here, once per model (:func:`vilt.devices.select_device_and_dtype`):
``dtype="int8"`` loads the model in float32 and gives its encoder int8 weights
(:func:`vilt.layers.quantize_int8`); its pipeline feeds it float32 inputs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..checkpoint import read_config
from ..configuration import ViltConfig
from ..devices import select_device_and_dtype
from ..errors import ViltInputError
from ..export.graph import BACKEND_OF_FORMAT
from ..export.runtime import ExportedModel, load_exported
from ..heads import MODEL_CLASSES
from ..hub import BUNDLED, model_source, resolve_file
from ..layers import quantize_int8
from ..tasks import BASE_ARCHITECTURE, TaskSpec

logger = logging.getLogger(__name__)

BACKENDS = ("torch", *BACKEND_OF_FORMAT.values())
BUNDLED_ARCHITECTURE = "ViltForQuestionAnswering"  # the bundled model's class: model=None serves its tasks


def read_model_config(source: str | os.PathLike[str]) -> ViltConfig:
    """The ``config.json`` of a model directory, ``bundled`` or a hub id."""
    return read_config(resolve_file(source, "config.json"))  # type: ignore[arg-type]


def load_processor(source: str | None) -> Any:
    """The processor saved with the model, or the default one (bundled vocabulary, 384-pixel images)."""
    from ..processing import ViltProcessor

    if source is None:
        return ViltProcessor()
    try:
        return ViltProcessor.from_pretrained(source)
    except FileNotFoundError as err:
        logger.warning("%s has no processor files (%s); using the default ViltProcessor()", source, err)
        return ViltProcessor()


def load_model(
    model: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[Any, Any]:
    """Any ViLT checkpoint as the class its config names (ViltModel when it names none), with its processor.

    Args:
        model: a hub id or a directory; None or ``"bundled"`` = the bundled easy-VQA model.
        device, dtype: as for :func:`vilt.devices.select_device_and_dtype` ("int8": int8 weights).

    Returns:
        (the model in eval mode, its processor).
    """
    source = model_source(model)
    config = read_model_config(source)
    architecture = next((a for a in config.architectures or [] if a in MODEL_CLASSES), BASE_ARCHITECTURE)
    device, dtype = select_device_and_dtype(device, dtype)
    return _load_torch(source, architecture, device, dtype), load_processor(source)


def load_runner(
    spec: TaskSpec,
    model: str | os.PathLike[str] | torch.nn.Module | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    backend: str,
) -> tuple[Any, torch.device, torch.dtype, str | None]:
    """The model a task pipeline runs, checked for the task's head.

    Args:
        spec: the task.
        model: a hub id, a directory, ``bundled``, a model instance, or None (the bundled model, for the
            tasks it does).
        device, dtype: None/"auto" picks; a model instance moves (or is quantized, for "int8") only when
            one is given. "int8" is for the torch backend: an exported model has int8 weights when it was
            exported with them (``vilt export --quantize int8``).
        backend: one of :data:`BACKENDS`.

    Returns:
        (the model, its device, the dtype of its floating inputs, its source: None for an instance).

    Raises:
        ViltInputError: an unknown backend, a missing model, a model without the task's head.
        TypeError: ``model`` is of another type.
        FileNotFoundError / OSError: the model cannot be found or downloaded.
    """
    if backend not in BACKENDS:
        raise ViltInputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if isinstance(model, torch.nn.Module):
        if backend != "torch":
            raise ViltInputError(
                f"a model instance runs on the torch backend; pass a directory exported for {backend}"
            )
        instance, device, dtype = _prepare_instance(model, spec, device, dtype)
        return instance, device, dtype, None
    if isinstance(model, ExportedModel):  # already loaded: its engine, device and precision stay
        _architecture(model.config, spec, "the exported model passed")
        return model, model.device, model.dtype, None
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a hub id, a directory, a ViLT model or an exported model, got {type(model).__name__}"
        )
    source, name = _source(model, spec)
    if backend == "torch":
        device, dtype = select_device_and_dtype(device, dtype)
        architecture = _architecture(read_model_config(source), spec, name)
        loaded = _load_torch(source, architecture, device, dtype)
        return loaded, device, loaded.dtype, source
    device, dtype = select_device_and_dtype(device or "cpu", dtype)
    if dtype == torch.qint8:
        raise ViltInputError(
            f"int8 on the {backend} backend comes from the export: run `vilt export --quantize int8` and load "
            "that directory with dtype float32 (or bfloat16 on openvino), or use the torch backend with int8"
        )
    exported = _load_exported(source, backend, device, dtype)
    _architecture(exported.config, spec, name)
    return exported, device, exported.dtype, source  # exported graphs take float32 inputs


def _source(model: str | os.PathLike[str] | None, spec: TaskSpec) -> tuple[str, str]:
    """Where the model's files are, and how messages name the model."""
    if model is None and BUNDLED_ARCHITECTURE not in spec.architectures:
        raise ViltInputError(
            f"the {spec.pipeline} task needs a model: pass model= a hub id or a directory holding a "
            f"{' or '.join(spec.architectures)} (the bundled model only answers easy-VQA questions)"
        )
    bundled = model is None or model == BUNDLED
    return model_source(model), "the bundled easy-VQA model" if bundled else os.fspath(model)  # type: ignore[arg-type]


def _no_head_error(spec: TaskSpec, name: str, architecture: str) -> ViltInputError:
    return ViltInputError(
        f"the {spec.pipeline} task needs a {' or '.join(spec.architectures)} ({spec.head}), but {name} is a "
        f"{architecture}; pass a model trained for {spec.pipeline}"
    )


def _architecture(config: ViltConfig, spec: TaskSpec, name: str) -> str:
    """The model class to load for the task: the checkpoint's own, which must have the task's head."""
    saved = [a for a in (config.architectures or []) if a in MODEL_CLASSES]
    if not saved:
        return spec.architectures[0]  # a config without architectures: trust the caller
    usable = [a for a in saved if a in spec.architectures]
    if not usable:
        raise _no_head_error(spec, name, saved[0])
    return usable[0]


def _load_torch(source: str, architecture: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The model in ``dtype`` on ``device`` (torch.qint8: float32 with int8 weights), ready for inference."""
    model_class = MODEL_CLASSES[architecture]
    int8 = dtype == torch.qint8
    model = model_class.from_pretrained(source, torch_dtype=torch.float32 if int8 else dtype, device=device)
    return (quantize_int8(model) if int8 else model).optimize_for_inference()


def _load_exported(source: str, backend: str, device: torch.device, dtype: torch.dtype) -> Any:
    """An exported model on onnxruntime (float32 or its int8 weights) or OpenVINO (computing in ``dtype``)."""
    options = {"dtype": dtype} if backend == "openvino" else {}
    return load_exported(source, backend, device=device, **options)


def _prepare_instance(
    model: torch.nn.Module, spec: TaskSpec, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[Any, torch.device, torch.dtype]:
    """A model instance: check its head; move it (int8: quantize it) only when device or dtype were given."""
    name = type(model).__name__
    if name not in spec.architectures:
        raise _no_head_error(spec, "the model passed", name)
    if device is not None or dtype is not None:
        device, dtype = select_device_and_dtype(device or model.device, dtype or model.dtype)  # type: ignore[arg-type]
        if dtype == torch.qint8:
            quantize_int8(model.to(device=device, dtype=torch.float32))
        else:
            model.to(device=device, dtype=dtype)
    model.eval()
    return model, model.device, model.dtype  # type: ignore[return-value]
