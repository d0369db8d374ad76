"""Export a ViLT model to ONNX or OpenVINO with dynamic batch, text length and image size.

:func:`export_model` writes the graph (``model.onnx``, or ``openvino_model.xml`` and ``.bin``) beside the
model's ``config.json`` and processor files, so the directory serves both the runtimes of
:mod:`vilt.export.runtime` and ``ViltProcessor.from_pretrained``. The directory is written all at once
(:func:`vilt.files.atomic_directory`): killed at any moment, it holds the earlier export or this one.

The graph:

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (batch, text_length) int64,
  ``pixel_values`` (batch, 3, H, W) float32 and ``pixel_mask`` (batch, H, W) int64; the NLVR2 head
  takes ``(batch, num_images, ...)`` images. Batch, text length (up to ``max_position_embeddings``),
  H and W are dynamic; H and W must be multiples of ``patch_size``.
* output ``logits``, or ``pooler_output`` for the bare :class:`vilt.ViltModel`.

The dynamo exporter (``torch.export``) traces the PyTorch model itself. While exporting, the model
keeps every patch of the padded image batch with padding patches masked, instead of counting image
tokens with a host sync (see ``ViltEmbeddings.visual_embed``), and always applies the padding mask.
Masked tokens change no other token, so the graph's logits equal the PyTorch model's. OpenVINO reads
that ONNX graph (``openvino.convert_model``) and saves it as its own IR.

``quantize="int8"``: for ONNX, onnxruntime's dynamic quantization (int8 weights, one scale per output
channel, activations quantized per batch on the fly); for OpenVINO, NNCF's int8 weight compression (int8
weights, computation in the CPU's float precision). Both need no calibration data;
``benchmarks/bench_backends.py`` measures speed and accuracy.

The ONNX weights use 7 of their 8 bits (onnxruntime's ``reduce_range``): on x86 CPUs without VNNI (AVX2,
AVX512 before Cascade Lake) onnxruntime multiplies uint8 activations by int8 weights in pairs summed into
16 bits, which saturate with full-range weights (the tiny test model's logits moved by 0.12 instead of
0.09 on an emulated Haswell, and by 0.69 with per-channel scales). With 7-bit weights no sum can
saturate, so the file gives the same outputs on every CPU.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..checkpoint import read_config
from ..configuration import ViltConfig
from ..errors import ViltInputError
from ..files import atomic_directory, check_output_directory
from ..heads import MODEL_CLASSES
from ..hub import model_source, resolve_file
from ..modeling import ViltModel, ViltPreTrainedModel
from ..tasks import BASE_ARCHITECTURE
from .graph import (
    BACKEND_OF_FORMAT,
    DEFAULT_OPSET,
    EXPORTABLE,
    FORMATS,
    GRAPH_FILES,
    INPUT_NAMES,
    ONNX_FILE,
    OPSETS,
    QUANTIZATIONS,
    TASKS,
    output_name,
    require,
)

logger = logging.getLogger(__name__)

PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
# what an export writes: a new one replaces them all, other files in the directory stay
EXPORT_FILES = frozenset((*GRAPH_FILES.values(), "openvino_model.bin", "config.json", *PROCESSOR_FILES))
MAX_PATCHES_PER_SIDE = 1024  # upper bound of the dynamic patch-grid axes (32768 pixels at patch 32)
VERIFY_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted for the float32 graph


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the graph file (``model.onnx`` or ``openvino_model.xml``).
        format: "onnx" or "openvino".
        architecture: the exported model class (``config.architectures[0]`` beside the graph).
        opset: the ONNX opset the graph was traced at.
        quantize: "int8" or None.
        size_bytes: size of the graph's files (the ``.xml`` and ``.bin`` for OpenVINO).
        max_abs_diff: largest |exported - PyTorch float32| output difference on a check batch whose
            sizes differ from the traced ones (for int8, the quantization error).
    """

    path: Path
    format: str
    architecture: str
    opset: int
    quantize: str | None
    size_bytes: int
    max_abs_diff: float


# ----------------------------------------------------------------------------- checking arguments


def _check_options(format: str, task: str | None, opset: int, quantize: str | None) -> None:
    if format not in FORMATS:
        raise ViltInputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if task is not None and task not in TASKS:
        raise ViltInputError(
            f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or none for the base model)"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ViltInputError(
            f"opset {opset!r} is not supported; choose {OPSETS[0]}..{OPSETS[-1]} (default {DEFAULT_OPSET})"
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ViltInputError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")


# ----------------------------------------------------------------------------- the model to export


def _saved_architecture(config: ViltConfig) -> str:
    """The exportable class named by ``config.architectures``; the base model when it names none."""
    saved = [a for a in (config.architectures or []) if a in MODEL_CLASSES]
    if not saved:
        return BASE_ARCHITECTURE
    if saved[0] not in EXPORTABLE:
        raise ViltInputError(
            f"the model is a {saved[0]}, which export does not support; pass a task ({', '.join(TASKS)}) "
            "whose head the checkpoint has"
        )
    return saved[0]


def _load_model(source: str, task: str | None) -> ViltPreTrainedModel:
    """Load the task's class from a checkpoint, in float32; raise if the checkpoint lacks its head."""
    config = read_config(resolve_file(source, "config.json"))  # type: ignore[arg-type]
    architecture = TASKS[task] if task else _saved_architecture(config)
    model, info = MODEL_CLASSES[architecture].from_pretrained(
        source, torch_dtype=torch.float32, output_loading_info=True
    )
    prefix = ViltModel.base_model_prefix + "."
    missing_head = [k for k in info["missing_keys"] if not k.startswith(prefix)]
    if missing_head and architecture != BASE_ARCHITECTURE:
        raise ViltInputError(
            f"{source} has no {task} head: the {architecture} weights {', '.join(missing_head[:4])} are not in "
            f"the checkpoint (its architectures: {config.architectures}); pick the task of the head it has"
        )
    return model


def _check_instance(model: nn.Module, task: str | None) -> ViltPreTrainedModel:
    """A model instance must be a ViLT class, and the task's class when a task is given."""
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"expected a vilt model (one of {', '.join(MODEL_CLASSES)}), got {name}")
    if task is not None and TASKS[task] != name:
        raise ViltInputError(
            f"the model is a {name}, which has no {task} head ({TASKS[task]}); pass its own task"
        )
    if name not in EXPORTABLE:
        raise ViltInputError(f"export does not support {name}; export one of {', '.join(EXPORTABLE)}")
    if isinstance(model, ViltModel) and model.pooler is None:
        raise ViltInputError("the base model has no pooler, so there is no pooler_output to export")
    exported = cast(ViltPreTrainedModel, copy.deepcopy(model))  # the caller's model keeps its dtype and mode
    return exported.float().eval()


class OnnxGraph(nn.Module):
    """The model's forward with the graph's five positional inputs and its one output.

    Args:
        model: a ViLT head model (output ``logits``) or the bare ViltModel (output ``pooler_output``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output_name = output_name(type(model).__name__)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            return_dict=True,
        )
        return getattr(out, self.output_name)


# ----------------------------------------------------------------------------- inputs


def example_inputs(
    config: ViltConfig,
    num_images: int | None,
    batch: int,
    text_length: int,
    rows: int,
    cols: int,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random padded batch: the last text and the last image (of each example) are padded.

    Args:
        config: the model's config (vocabulary, patch size, channels).
        num_images: images per example (NLVR2) or None for one image, without that axis.
        batch, text_length: text batch shape; the last text keeps ``max(1, text_length - 2)`` tokens.
        rows, cols: patch grid of the padded image batch; the last image keeps (rows - 1, cols - 1)
            patches when those are >= 1.
    """
    generator = torch.Generator().manual_seed(seed)
    p = config.patch_size
    images = () if num_images is None else (num_images,)
    attention_mask = torch.ones(batch, text_length, dtype=torch.long)
    attention_mask[-1, max(1, text_length - 2) :] = 0
    pixel_mask = torch.ones(batch, *images, rows * p, cols * p, dtype=torch.long)
    pixel_mask[-1, ..., max(1, rows - 1) * p :, :] = 0
    pixel_mask[-1, ..., :, max(1, cols - 1) * p :] = 0
    return {
        "input_ids": torch.randint(1, config.vocab_size, (batch, text_length), generator=generator),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, text_length, dtype=torch.long),
        "pixel_values": torch.randn(
            batch, *images, config.num_channels, rows * p, cols * p, generator=generator
        ),
        "pixel_mask": pixel_mask,
    }


def _dynamic_shapes(config: ViltConfig, num_images: int | None) -> dict[str, dict[int, Any]]:
    """torch.export dimensions: batch, text length and the patch grid (pixels = patch_size x patches)."""
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=65536)
    text = dim("text_length", min=1, max=config.max_position_embeddings)
    height = config.patch_size * dim("patch_rows", min=1, max=MAX_PATCHES_PER_SIDE)
    width = config.patch_size * dim("patch_cols", min=1, max=MAX_PATCHES_PER_SIDE)
    first = 1 if num_images is None else 2  # the axis after batch (and images) of the image inputs
    return {
        "input_ids": {0: batch, 1: text},
        "attention_mask": {0: batch, 1: text},
        "token_type_ids": {0: batch, 1: text},
        "pixel_values": {0: batch, first + 1: height, first + 2: width},
        "pixel_mask": {0: batch, first: height, first + 1: width},
    }


# ----------------------------------------------------------------------------- export steps


def _export_graph(
    graph: OnnxGraph, config: ViltConfig, num_images: int | None, opset: int, path: Path
) -> None:
    """Trace ``graph`` with torch.export and write it as one ONNX file."""
    length = min(7, config.max_position_embeddings)
    inputs = example_inputs(config, num_images, batch=2, text_length=length, rows=5, cols=3)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own notes on shared axis names and its internal pytree API: nothing to act on
        warnings.filterwarnings("ignore", message=r"# The axis name", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        program = torch.onnx.export(
            graph,
            tuple(inputs[name] for name in INPUT_NAMES),
            input_names=list(INPUT_NAMES),
            output_names=[graph.output_name],
            dynamic_shapes=_dynamic_shapes(config, num_images),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None  # the dynamo exporter returns the program when f is None
    program.save(str(path), external_data=False)


def _quantize_onnx_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization: 7-bit int8 weights per output channel (saturation-free on every CPU: see
    the module docstring), activations quantized on the fly per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )


def _to_openvino(source: Path, target: Path, quantize: str | None) -> None:
    """Convert the ONNX graph to OpenVINO IR (``.xml`` + ``.bin``), with int8 weights when asked."""
    import openvino as ov

    model = ov.convert_model(str(source))
    if quantize == "int8":
        import nncf

        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(target), compress_to_fp16=False)


def _max_abs_diff(
    path: Path, backend: str, graph: OnnxGraph, config: ViltConfig, num_images: int | None
) -> float:
    """Run the exported file and PyTorch on a check batch whose every dynamic size differs from the trace's."""
    from .runtime import EXPORTED_MODELS

    length = min(5, config.max_position_embeddings)
    inputs = example_inputs(config, num_images, batch=3, text_length=length, rows=4, cols=2, seed=1)
    with torch.no_grad():
        expected = graph(*(inputs[name] for name in INPUT_NAMES))
    options = {"dtype": torch.float32} if backend == "openvino" else {}
    got = EXPORTED_MODELS[backend].from_file(path, config, **options).run(inputs)
    return float(np.abs(got - expected.numpy()).max())


def _copy_processor_files(source: str | None, processor: Any, output_dir: Path) -> None:
    """Save ``processor``, or copy the processor files that exist beside the source checkpoint."""
    if processor is not None:
        processor.save_pretrained(output_dir)
        return
    copied = []
    for name in PROCESSOR_FILES:
        found = None if source is None else resolve_file(source, name, required=False)
        if found is not None:
            shutil.copyfile(found, output_dir / name)
            copied.append(name)
    if not copied:
        logger.warning(
            "no processor files to copy: %s will use the default ViltProcessor() unless you save one there",
            output_dir,
        )


def export_model(
    model_or_path: nn.Module | str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    format: str = "onnx",
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    force: bool = False,
    processor: Any = None,
) -> ExportResult:
    """Export a ViLT model to ``output_dir`` as ONNX or OpenVINO, with its config and processor files.

    Args:
        model_or_path: a model instance, a local checkpoint directory, a hub id, or ``bundled``/None for
            the bundled easy-VQA model.
        output_dir: the directory to write (created; must be empty unless ``force``).
        format: "onnx" (``model.onnx``) or "openvino" (``openvino_model.xml`` and ``.bin``).
        task: "vqa", "nlvr2", "retrieval", "mlm" or "itm": the head to export; None exports the class
            the checkpoint names in ``config.architectures`` (or the instance's class), the base model
            when it names none.
        opset: ONNX opset, 17 to 22.
        quantize: "int8" (see the module docstring), or None for float32 weights.
        force: write into a non-empty ``output_dir``: the files of an earlier export there are replaced,
            other files are kept.
        processor: a ViltProcessor to save beside the graph (default: copy the checkpoint's files).

    Returns:
        An :class:`ExportResult` (path, architecture, opset, size and the check against PyTorch).

    Raises:
        ViltInputError: unknown format, task or quantization, unsupported opset, a model without the
            task's head, or a float32 graph that disagrees with PyTorch.
        FileExistsError: ``output_dir`` exists and is not empty, without ``force``.
        ViltInputError: ``output_dir`` is the current directory (or holds it), or is (or holds) the
            model directory exported (:func:`vilt.files.check_output_directory`).
        ImportError: the format's extra is not installed.
    """
    _check_options(format, task, opset, quantize)
    require(format)
    output_dir = Path(output_dir)
    source = None if isinstance(model_or_path, nn.Module) else model_source(model_or_path)
    local = [source] if source is not None and Path(source).is_dir() else []
    check_output_directory(output_dir, force=force, inputs=local, replaced="the files of an earlier export")
    model = _check_instance(model_or_path, task) if source is None else _load_model(source, task)  # type: ignore[arg-type]
    architecture = type(model).__name__
    config = model.config.replace(architectures=[architecture])
    num_images = config.num_images if architecture == TASKS["nlvr2"] else None
    graph = OnnxGraph(model).eval()
    with atomic_directory(output_dir, keep_old=lambda name: name not in EXPORT_FILES) as staging:
        onnx_path = staging / ONNX_FILE
        logger.info("exporting %s to ONNX opset %d", architecture, opset)
        _export_graph(graph, config, num_images, opset, onnx_path)
        diff = _max_abs_diff(onnx_path, "onnxruntime", graph, config, num_images)
        logger.info("float32 graph vs PyTorch on an unseen batch shape: max |diff| = %.2e", diff)
        if diff > VERIFY_TOLERANCE:
            raise ViltInputError(
                f"the exported graph disagrees with PyTorch (max |diff| {diff:.2e} > {VERIFY_TOLERANCE}); "
                "please report this with the model's config.json"
            )
        path, backend = staging / GRAPH_FILES[format], BACKEND_OF_FORMAT[format]
        if format == "openvino":
            logger.info("converting to OpenVINO%s", " with int8 weights" if quantize else "")
            _to_openvino(onnx_path, path, quantize)
            onnx_path.unlink()
        elif quantize == "int8":
            _quantize_onnx_int8(onnx_path, staging / "int8.onnx")
            os.replace(staging / "int8.onnx", onnx_path)
        if format == "openvino" or quantize:
            diff = _max_abs_diff(path, backend, graph, config, num_images)
            logger.info("%s graph vs PyTorch float32: max |diff| = %.2e", quantize or format, diff)
        config.save_pretrained(staging)
        _copy_processor_files(source, processor, staging)
        size = sum(f.stat().st_size for f in staging.iterdir() if f.name.startswith(path.stem))
    return ExportResult(output_dir / path.name, format, architecture, opset, quantize, size, diff)


def export_onnx(
    model_or_path: nn.Module | str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    force: bool = False,
    processor: Any = None,
) -> ExportResult:
    """:func:`export_model` with ``format="onnx"`` (the name of earlier versions)."""
    return export_model(model_or_path, output_dir, "onnx", task, opset, quantize, force, processor)
