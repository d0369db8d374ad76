"""Export a ViLT model to ONNX with dynamic batch, text length and image size.

:func:`export_onnx` writes ``model.onnx`` beside the model's ``config.json`` and processor files, so the
directory serves both :class:`vilt.export.runtime.OnnxModel` and ``ViltProcessor.from_pretrained``.

The graph:

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (batch, text_length) int64,
  ``pixel_values`` (batch, 3, H, W) float32 and ``pixel_mask`` (batch, H, W) int64; the NLVR2 head
  takes ``(batch, num_images, ...)`` images. Batch, text length (up to ``max_position_embeddings``),
  H and W are dynamic; H and W must be multiples of ``patch_size``.
* output ``logits``, or ``pooler_output`` for the bare :class:`vilt.ViltModel`.

The dynamo exporter (``torch.export``) traces the PyTorch model itself. While exporting, the model
keeps every patch of the padded image batch with padding patches masked, instead of counting image
tokens with a host sync (see ``ViltEmbeddings.visual_embed``), and always applies the padding mask.
Masked tokens change no other token, so the graph's logits equal the PyTorch model's.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..checkpoint import read_config
from ..configuration import ViltConfig
from ..files import atomic_directory
from ..heads import MODEL_CLASSES
from ..hub import resolve_file
from ..modeling import ViltModel, ViltPreTrainedModel
from ..tasks import BASE_ARCHITECTURE, find_task, task_names

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")
# export --task NAME -> the class exported (the task's preferred head)
TASKS = {name: find_task(name).architectures[0] for name in task_names("export")}
EXPORTABLE = (*TASKS.values(), BASE_ARCHITECTURE)
# the dynamo exporter writes opset 18 and converts down to 17; onnxruntime's opset-23 Attention
# kernel rejects the (batch, 1, 1, L) padding mask, so 22 is the newest that runs
OPSETS = range(17, 23)
DEFAULT_OPSET = 18
QUANTIZATIONS = ("int8",)
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
EXPORT_FILES = frozenset((ONNX_FILE, "config.json", *PROCESSOR_FILES))  # what an export writes
MAX_PATCHES_PER_SIDE = 1024  # upper bound of the dynamic patch-grid axes (32768 pixels at patch 32)
VERIFY_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted for the float32 graph


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``model.onnx`` file.
        architecture: the exported model class (``config.architectures[0]`` beside the graph).
        opset: the ONNX opset of the graph.
        quantize: "int8" or None.
        size_bytes: size of ``model.onnx``.
        max_abs_diff: largest |onnxruntime - PyTorch float32| output difference on a check batch whose
            sizes differ from the traced ones (for int8, the quantization error).
    """

    path: Path
    architecture: str
    opset: int
    quantize: str | None
    size_bytes: int
    max_abs_diff: float


def require_onnx() -> None:
    """Raise ImportError with the install command when the ``onnx`` extra is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export and inference need {', '.join(missing)}: pip install 'vilt[onnx]'")


# ----------------------------------------------------------------------------- checking arguments


def _check_options(task: str | None, opset: int, quantize: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(
            f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or none for the base model)"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ValueError(
            f"opset {opset!r} is not supported; choose {OPSETS[0]}..{OPSETS[-1]} (default {DEFAULT_OPSET})"
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")


def _check_output_dir(output_dir: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory unless ``force``."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a directory; choose another --output")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise FileExistsError(
            f"{output_dir} already exists and is not empty; pass --force (force=True) to overwrite it "
            "or choose another --output"
        )


# ----------------------------------------------------------------------------- the model to export


def _saved_architecture(config: ViltConfig) -> str:
    """The exportable class named by ``config.architectures``; the base model when it names none."""
    saved = [a for a in (config.architectures or []) if a in MODEL_CLASSES]
    if not saved:
        return BASE_ARCHITECTURE
    if saved[0] not in EXPORTABLE:
        raise ValueError(
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
        raise ValueError(
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
        raise ValueError(
            f"the model is a {name}, which has no {task} head ({TASKS[task]}); pass its own task"
        )
    if name not in EXPORTABLE:
        raise ValueError(f"export does not support {name}; export one of {', '.join(EXPORTABLE)}")
    if isinstance(model, ViltModel) and model.pooler is None:
        raise ValueError("the base model has no pooler, so there is no pooler_output to export")
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
        self.output_name = "pooler_output" if isinstance(model, ViltModel) else "logits"

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


def _quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization: int8 weights, activations quantized on the fly per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def _max_abs_diff(path: Path, graph: OnnxGraph, config: ViltConfig, num_images: int | None) -> float:
    """Run the ONNX file and PyTorch on a check batch whose every dynamic size differs from the trace's."""
    from .runtime import OnnxModel

    length = min(5, config.max_position_embeddings)
    inputs = example_inputs(config, num_images, batch=3, text_length=length, rows=4, cols=2, seed=1)
    with torch.no_grad():
        expected = graph(*(inputs[name] for name in INPUT_NAMES))
    got = OnnxModel.from_file(path, config).run(inputs)
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


def export_onnx(
    model_or_path: nn.Module | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    force: bool = False,
    processor: Any = None,
) -> ExportResult:
    """Export a ViLT model to ``output_dir/model.onnx`` with its config and processor files.

    Args:
        model_or_path: a model instance, a local checkpoint directory or a hub id.
        output_dir: the directory to write (created; must be empty unless ``force``), all at once: killed
            at any moment, it holds its earlier contents or the whole export. With ``force`` the files of
            an earlier export there are replaced and other files kept.
        task: "vqa", "nlvr2", "retrieval", "mlm" or "itm": the head to export; None exports the class
            the checkpoint names in ``config.architectures`` (or the instance's class), the base model
            when it names none.
        opset: ONNX opset, 17 to 22.
        quantize: "int8" for dynamic int8 quantization of the weights, or None for float32.
        force: overwrite a non-empty ``output_dir``.
        processor: a ViltProcessor to save beside the graph (default: copy the checkpoint's files).

    Returns:
        An :class:`ExportResult` (path, architecture, opset, size and the check against PyTorch).

    Raises:
        ValueError: unknown task or quantization, unsupported opset, a model without the task's head, or
            a float32 graph that disagrees with PyTorch.
        FileExistsError: ``output_dir`` exists and is not empty, without ``force``.
        ImportError: the ``onnx`` extra is not installed.
    """
    require_onnx()
    _check_options(task, opset, quantize)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, force)
    source = None if isinstance(model_or_path, nn.Module) else os.fspath(model_or_path)
    if source is None:
        model = _check_instance(model_or_path, task)  # type: ignore[arg-type]
    else:
        model = _load_model(source, task)
    architecture = type(model).__name__
    config = model.config.replace(architectures=[architecture])
    num_images = config.num_images if architecture == TASKS["nlvr2"] else None
    graph = OnnxGraph(model).eval()
    # the graph, its config and processor files appear together, whenever the process is killed; the
    # files of an earlier export are replaced, anything else in the directory is kept
    with atomic_directory(output_dir, keep_old=lambda name: name not in EXPORT_FILES) as staging:
        with tempfile.TemporaryDirectory(dir=staging, prefix=".export-") as scratch:
            float_path = Path(scratch) / ONNX_FILE
            logger.info("exporting %s to ONNX opset %d", architecture, opset)
            _export_graph(graph, config, num_images, opset, float_path)
            diff = _max_abs_diff(float_path, graph, config, num_images)
            logger.info("float32 graph vs PyTorch on an unseen batch shape: max |diff| = %.2e", diff)
            if diff > VERIFY_TOLERANCE:
                raise ValueError(
                    f"the exported graph disagrees with PyTorch (max |diff| {diff:.2e} > {VERIFY_TOLERANCE}); "
                    "please report this with the model's config.json"
                )
            if quantize == "int8":
                _quantize_int8(float_path, Path(scratch) / "int8.onnx")
                os.replace(Path(scratch) / "int8.onnx", float_path)
                diff = _max_abs_diff(float_path, graph, config, num_images)
                logger.info("int8 graph vs PyTorch float32: max |diff| = %.2e", diff)
            os.replace(float_path, staging / ONNX_FILE)
        config.save_pretrained(staging)
        _copy_processor_files(source, processor, staging)
    target = output_dir / ONNX_FILE
    return ExportResult(target, architecture, opset, quantize, target.stat().st_size, diff)
