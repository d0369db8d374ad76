"""Run an exported ViLT graph with onnxruntime, called like the PyTorch model.

``OnnxModel.from_pretrained(directory)`` reads what :func:`vilt.export.export_onnx` wrote
(``model.onnx`` and ``config.json``). The model takes the processor's keyword tensors (torch or numpy)
and returns the PyTorch head's output class with ``.logits`` as a torch tensor (``.pooler_output``
for the base model), so the task pipelines use it unchanged
(``vilt.pipeline("vqa", model=directory, backend="onnxruntime")``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_config
from ..configuration import ViltConfig
from ..heads import MODEL_CLASSES
from ..hub import resolve_file
from ..modeling import ModelOutput, ViltModelOutput
from .exporter import BASE_ARCHITECTURE, INPUT_NAMES, ONNX_FILE, TASKS, require_onnx

ArrayLike = torch.Tensor | np.ndarray


def _providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for a torch device."""
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(
        f"onnxruntime cannot run on {device} here (available: {', '.join(ort.get_available_providers())}); "
        "use device='cpu', or install onnxruntime-gpu for CUDA"
    )


def _numpy(value: ArrayLike, dtype: type[np.generic]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        value = value.numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class OnnxModel:
    """An exported ViLT model on an onnxruntime session.

    Args:
        session: an ``onnxruntime.InferenceSession`` of a graph written by ``export_onnx``.
        config: the exported model's config; ``config.architectures[0]`` names the exported class.
    """

    def __init__(self, session: Any, config: ViltConfig) -> None:
        self.session = session
        self.config = config
        self.architecture = (config.architectures or [BASE_ARCHITECTURE])[0]
        self.num_images = config.num_images if self.architecture == TASKS["nlvr2"] else None
        self.output_name = session.get_outputs()[0].name
        self.device = torch.device("cpu")  # outputs come back on the CPU
        self.dtype = torch.float32

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        device: str | torch.device | None = None,
        session_options: Any = None,
    ) -> OnnxModel:
        """Load ``model.onnx`` and ``config.json`` from an export directory or a hub id.

        Args:
            source: a directory written by ``vilt export`` (or a hub repository holding one).
            device: "cpu" (default) or "cuda" (needs onnxruntime-gpu).
            session_options: an ``onnxruntime.SessionOptions`` (threads, graph optimisation level...).

        Raises:
            FileNotFoundError: ``source`` has no ``model.onnx`` (export it with ``vilt export``).
            ImportError: the ``onnx`` extra is not installed.
        """
        require_onnx()
        graph = resolve_file(source, ONNX_FILE, required=False)
        if graph is None:
            raise FileNotFoundError(
                f"{os.fspath(source)} has no {ONNX_FILE}; create it with `vilt export --model M --format onnx "
                f"--output {os.fspath(source)}`"
            )
        config = read_config(resolve_file(source, "config.json"))  # type: ignore[arg-type]
        return cls.from_file(graph, config, device, session_options)  # type: ignore[arg-type]

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        config: ViltConfig,
        device: str | torch.device | None = None,
        session_options: Any = None,
    ) -> OnnxModel:
        """Open one ONNX file with the config of the model it was exported from."""
        import onnxruntime as ort

        providers = _providers(torch.device(device or "cpu"))
        session = ort.InferenceSession(os.fspath(path), sess_options=session_options, providers=providers)
        return cls(session, config)

    def __repr__(self) -> str:
        return (
            f"OnnxModel({self.architecture}, outputs {self.output_name!r}, {self.session.get_providers()[0]})"
        )

    # -- inputs ------------------------------------------------------------------------------------
    def _text_inputs(
        self, input_ids: ArrayLike | None, attention_mask: ArrayLike | None, token_type_ids: ArrayLike | None
    ) -> dict[str, np.ndarray]:
        if input_ids is None:
            raise ValueError("pass input_ids (batch, text length), as the processor makes them")
        ids = _numpy(input_ids, np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be 2-D (batch, text length >= 1), got shape {ids.shape}")
        limit = self.config.max_position_embeddings
        if ids.shape[1] > limit:
            raise ValueError(
                f"the text is {ids.shape[1]} tokens long but this model reads at most {limit}; tokenize with "
                f"truncation=True, max_length={limit}"
            )
        mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask, np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else _numpy(token_type_ids, np.int64)
        for name, value in (("attention_mask", mask), ("token_type_ids", types)):
            if value.shape != ids.shape:
                raise ValueError(f"{name} must have shape {ids.shape} like input_ids, got {value.shape}")
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _image_inputs(
        self, pixel_values: ArrayLike | None, pixel_mask: ArrayLike | None
    ) -> dict[str, np.ndarray]:
        if pixel_values is None:
            raise ValueError("pass pixel_values, as the processor makes them")
        pixels = _numpy(pixel_values, np.float32)
        images = () if self.num_images is None else (self.num_images,)
        c, p = self.config.num_channels, self.config.patch_size
        if pixels.ndim != 4 + len(images) or pixels.shape[1:-2] != (*images, c):
            raise ValueError(
                f"pixel_values must have shape (batch, {', '.join(map(str, (*images, c)))}, height, width), "
                f"got {pixels.shape}"
            )
        height, width = pixels.shape[-2:]
        if height % p or width % p:
            raise ValueError(
                f"the image batch is {height}x{width} pixels; the exported graph needs multiples of the "
                f"{p}-pixel patch: pad the images (the processor does, with size_divisor={p})"
            )
        mask = np.ones(pixels.shape[:-3] + pixels.shape[-2:], np.int64)
        if pixel_mask is not None:
            mask = _numpy(pixel_mask, np.int64)
            if mask.shape != pixels.shape[:-3] + pixels.shape[-2:]:
                raise ValueError(
                    f"pixel_mask must have shape {pixels.shape[:-3] + pixels.shape[-2:]}, got {mask.shape}"
                )
        patch_corners = mask[..., ::p, ::p].reshape(*mask.shape[:-2], -1)  # (B, [n,] Hp * Wp)
        empty = np.argwhere(~patch_corners.any(axis=-1))
        if len(empty):
            raise ValueError(
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
        if feed["pixel_values"].shape[0] != feed["input_ids"].shape[0]:
            raise ValueError(
                f"the text batch has {feed['input_ids'].shape[0]} examples but the image batch has "
                f"{feed['pixel_values'].shape[0]}; they must match"
            )
        return self.session.run([self.output_name], {name: feed[name] for name in INPUT_NAMES})[0]

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
