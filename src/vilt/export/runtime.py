"""Run an exported ViLT model, called like the PyTorch model: onnxruntime or OpenVINO.

``OnnxModel.from_pretrained(directory)`` and ``OpenVinoModel.from_pretrained(directory)`` read what
:func:`vilt.export.export_model` wrote (the graph and ``config.json``; OpenVINO also reads ``model.onnx``
directly). The models take the processor's keyword tensors (torch or numpy), check them as the PyTorch
model does, and return the PyTorch head's output class with ``.logits`` as a torch tensor
(``.pooler_output`` for the base model), so the task pipelines use them unchanged:
``vilt.pipeline("vqa", model=directory, backend="onnxruntime" | "openvino")``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ..checkpoint import read_config
from ..configuration import ViltConfig
from ..devices import select_device_and_dtype
from ..errors import ViltInputError
from ..heads import MODEL_CLASSES
from ..hub import resolve_file
from ..inputs import check_pixels, check_same_batch, check_text
from ..modeling import ModelOutput, ViltModelOutput
from ..tasks import BASE_ARCHITECTURE
from .graph import INPUT_NAMES, ONNX_FILE, OPENVINO_FILE, TASKS, output_name, require

ArrayLike = torch.Tensor | np.ndarray


def _numpy(value: ArrayLike, dtype: type[np.generic]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        value = value.numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class ExportedModel:
    """An exported ViLT model on an inference engine: input checks, output classes, loading.

    Subclasses run the graph (:meth:`_infer`) and say which files they read (``graph_files``, in order of
    preference).

    Args:
        config: the exported model's config; ``config.architectures[0]`` names the exported class.
    """

    backend: ClassVar[str]
    graph_files: ClassVar[tuple[str, ...]]

    def __init__(self, config: ViltConfig) -> None:
        self.config = config
        self.architecture = (config.architectures or [BASE_ARCHITECTURE])[0]
        self.num_images = config.num_images if self.architecture == TASKS["nlvr2"] else None
        self.output_name = output_name(self.architecture)
        self.device = torch.device("cpu")  # outputs come back on the CPU
        self.dtype = torch.float32

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], **options: Any) -> ExportedModel:
        """Load the graph and ``config.json`` from an export directory (or a hub repository holding one).

        Args:
            source: a directory written by ``vilt export``.
            **options: the engine's options (see each subclass's ``from_file``).

        Raises:
            FileNotFoundError: ``source`` holds no graph this engine reads (export it with ``vilt export``).
            ImportError: the engine's extra is not installed.
        """
        require(cls.backend)
        for name in cls.graph_files:
            graph = resolve_file(source, name, required=False)
            if graph is not None:
                config = read_config(resolve_file(source, "config.json"))  # type: ignore[arg-type]
                return cls.from_file(graph, config, **options)
        fmt = "openvino" if cls.graph_files[0] == OPENVINO_FILE else "onnx"
        raise FileNotFoundError(
            f"{os.fspath(source)} has no {' or '.join(cls.graph_files)}; create it with `vilt export --model M "
            f"--format {fmt} --output {os.fspath(source)}`"
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], config: ViltConfig, *args: Any, **options: Any
    ) -> ExportedModel:
        """Open one graph file; the other arguments are the engine's options (each subclass names them)."""
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph on checked numpy inputs; its one output."""
        raise NotImplementedError

    # -- inputs ------------------------------------------------------------------------------------
    def _text_inputs(
        self, input_ids: ArrayLike | None, attention_mask: ArrayLike | None, token_type_ids: ArrayLike | None
    ) -> dict[str, np.ndarray]:
        if input_ids is None:
            raise ViltInputError("pass input_ids (batch, text length), as the processor makes them")
        ids = _numpy(input_ids, np.int64)
        mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask, np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else _numpy(token_type_ids, np.int64)
        check_text(self.config, ids.shape, mask.shape, types.shape)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _image_inputs(
        self, pixel_values: ArrayLike | None, pixel_mask: ArrayLike | None
    ) -> dict[str, np.ndarray]:
        if pixel_values is None:
            raise ViltInputError("pass pixel_values, as the processor makes them")
        pixels = _numpy(pixel_values, np.float32)
        mask = (
            np.ones(pixels.shape[:-3] + pixels.shape[-2:], np.int64)
            if pixel_mask is None
            else _numpy(pixel_mask, np.int64)
        )
        images = () if self.num_images is None else (self.num_images,)
        check_pixels(self.config, pixels.shape, mask.shape, images)
        height, width, p = *pixels.shape[-2:], self.config.patch_size
        if height % p or width % p:
            raise ViltInputError(
                f"the image batch is {height}x{width} pixels; the exported graph needs multiples of the "
                f"{p}-pixel patch: pad the images (the processor does, with size_divisor={p})"
            )
        patch_corners = mask[..., ::p, ::p].reshape(*mask.shape[:-2], -1)  # (B, [n,] Hp * Wp)
        empty = np.argwhere(~patch_corners.any(axis=-1))
        if len(empty):
            raise ViltInputError(
                f"pixel_mask marks no patch of image {tuple(empty[0].tolist())} as real; every image needs "
                "at least one real patch. Pass the pixel_mask the processor returns."
            )
        return {"pixel_values": pixels, "pixel_mask": mask}

    # -- running -----------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, ArrayLike | None]) -> np.ndarray:
        """Run the graph on a dict of the five inputs (checked first); returns its output as numpy."""
        feed = {
            **self._text_inputs(
                inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("token_type_ids")
            ),
            **self._image_inputs(inputs.get("pixel_values"), inputs.get("pixel_mask")),
        }
        check_same_batch(feed["input_ids"].shape[0], feed["pixel_values"].shape[0])
        return self._infer({name: feed[name] for name in INPUT_NAMES})

    def __call__(
        self,
        input_ids: ArrayLike | None = None,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        pixel_values: ArrayLike | None = None,
        pixel_mask: ArrayLike | None = None,
    ) -> ModelOutput:
        """Run the model like its PyTorch class (same arguments as the processor's output).

        Returns:
            The PyTorch head's output class with ``logits`` (a float32 CPU tensor), or a
            ``ViltModelOutput`` with ``pooler_output`` for the base model.
        """
        output = torch.from_numpy(
            self.run(
                {
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                    "token_type_ids": token_type_ids,
                    "pixel_values": pixel_values,
                    "pixel_mask": pixel_mask,
                }
            )
        )
        if self.architecture == BASE_ARCHITECTURE:
            return ViltModelOutput(pooler_output=output)
        return MODEL_CLASSES[self.architecture].output_class(logits=output)  # type: ignore[attr-defined]


class OnnxModel(ExportedModel):
    """An exported ViLT model on an onnxruntime session (``model.onnx``).

    Args:
        session: an ``onnxruntime.InferenceSession`` of a graph written by ``vilt export``.
        config: the exported model's config.
    """

    backend = "onnxruntime"
    graph_files = (ONNX_FILE,)

    def __init__(self, session: Any, config: ViltConfig) -> None:
        super().__init__(config)
        self.session = session

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        config: ViltConfig,
        device: str | torch.device | None = None,
        session_options: Any = None,
    ) -> OnnxModel:
        """Open one ONNX file with the config of the model it was exported from.

        Args:
            path: the ``.onnx`` file.
            config: the exported model's config.
            device: "cpu" (default) or "cuda" (needs onnxruntime-gpu).
            session_options: an ``onnxruntime.SessionOptions`` (threads, graph optimisation level...).
        """
        import onnxruntime as ort

        providers = _providers(torch.device(device or "cpu"))
        session = ort.InferenceSession(os.fspath(path), sess_options=session_options, providers=providers)
        return cls(session, config)

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.session.get_outputs()[0].name], feed)[0]

    def __repr__(self) -> str:
        return (
            f"OnnxModel({self.architecture}, outputs {self.output_name!r}, {self.session.get_providers()[0]})"
        )


def _providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for a torch device."""
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ViltInputError(
        f"onnxruntime cannot run on {device} here (available: {', '.join(ort.get_available_providers())}); "
        "use device='cpu', or install onnxruntime-gpu for CUDA"
    )


class OpenVinoModel(ExportedModel):
    """An exported ViLT model compiled by OpenVINO for the CPU (``openvino_model.xml``, or ``model.onnx``).

    Args:
        compiled: an ``openvino.CompiledModel``.
        config: the exported model's config.
    """

    backend = "openvino"
    graph_files = (OPENVINO_FILE, ONNX_FILE)

    def __init__(self, compiled: Any, config: ViltConfig) -> None:
        super().__init__(config)
        self.compiled = compiled
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        config: ViltConfig,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        threads: int | None = None,
    ) -> OpenVinoModel:
        """Compile an OpenVINO IR (``.xml``) or ONNX file for the CPU.

        Args:
            path: the graph file.
            config: the exported model's config.
            device: "cpu" (the only device this backend runs on here).
            dtype: the precision the CPU computes in: float32, bfloat16, or None/"auto" for bfloat16 on
                CPUs with native bfloat16 products (AVX512-BF16, AMX) and float32 elsewhere, as the torch
                backend chooses. Inputs and outputs stay float32.
            threads: CPU threads for inference (default: OpenVINO's, one per core).
        """
        import openvino as ov

        device, precision = select_device_and_dtype(device or "cpu", dtype)
        if precision == torch.qint8:
            raise ViltInputError(
                "OpenVINO computes in float32 or bfloat16; int8 weights come from `vilt export --quantize int8`"
            )
        if device.type != "cpu":
            raise ViltInputError(f"the openvino backend runs on the CPU here, not {device}; use device='cpu'")
        properties: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == torch.bfloat16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        return cls(core.compile_model(core.read_model(os.fspath(path)), "CPU", properties), config)

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        request = self.compiled.create_infer_request()  # one per call: calls may come from several threads
        return np.asarray(request.infer(feed)[0], dtype=np.float32)

    def __repr__(self) -> str:
        return f"OpenVinoModel({self.architecture}, outputs {self.output_name!r}, CPU {self.precision})"


EXPORTED_MODELS: dict[str, type[ExportedModel]] = {"onnxruntime": OnnxModel, "openvino": OpenVinoModel}


def load_exported(source: str | os.PathLike[str], backend: str, **options: Any) -> ExportedModel:
    """The exported model in ``source`` on ``backend`` ("onnxruntime" or "openvino").

    Args:
        source: a directory written by ``vilt export``.
        backend: the inference engine.
        **options: its options (``device``; for openvino also ``dtype`` and ``threads``).
    """
    if backend not in EXPORTED_MODELS:
        raise ViltInputError(f"unknown backend {backend!r}; use one of torch, {', '.join(EXPORTED_MODELS)}")
    return EXPORTED_MODELS[backend].from_pretrained(source, **options)
