"""Convert the original ViLT checkpoints (dandelin/ViLT's PyTorch-Lightning ``.ckpt`` files) into a
model directory that ``vilt`` and ``transformers`` load.

The five released kinds and what each becomes:

| kind | original heads | written classes (``config.architectures``) |
|---|---|---|
| ``mlm_itm`` | ``mlm_score``, ``itm_score`` | ViltForMaskedLM and ViltForImageTextMatching, from one directory |
| ``vqa`` | ``vqa_classifier`` | ViltForQuestionAnswering (id2label from the answer list, when given) |
| ``nlvr2`` | ``nlvr2_classifier`` | ViltForImagesAndTextClassification (num_images 2, 3 modality embeddings) |
| ``irtr_coco``, ``irtr_f30k`` | ``rank_output`` (+ its ``itm_score`` source, dropped) | ViltForImageAndTextRetrieval |

The key mapping and the split of the fused ``attn.qkv`` follow original-vilt.md §6.2, as the reference's
converter does; unlike it, the ``mlm_itm`` conversion keeps the ITM head, whose "match" logit is the
paper's zero-shot retrieval score. The config is read off the tensors (sizes) and the checkpoint's
training config (number of heads). Like the reference, every LayerNorm gets eps 1e-12; the original
ViT blocks used 1e-6 (original-vilt.md §6.2 puts the difference in the outputs around 1e-4).

The ``.ckpt`` is read with ``torch.load(weights_only=True)``: tensors and plain containers only, with
Lightning's bookkeeping classes read into inert stand-ins (:func:`vilt.checkpoint.read_torch_file`).
A file that refers to any other code is refused, unexecuted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from . import arguments as check
from .arguments import announce_slow
from .errors import ViltInputError
from .files import atomic_directory, check_output_directory

logger = logging.getLogger(__name__)

KINDS = ("mlm_itm", "vqa", "nlvr2", "irtr_coco", "irtr_f30k")
ARCHITECTURES = {
    "mlm_itm": ("ViltForMaskedLM", "ViltForImageTextMatching"),
    "vqa": ("ViltForQuestionAnswering",),
    "nlvr2": ("ViltForImagesAndTextClassification",),
    "irtr_coco": ("ViltForImageAndTextRetrieval",),
    "irtr_f30k": ("ViltForImageAndTextRetrieval",),
}
# a key only that kind's checkpoint has, tested in this order (an irtr checkpoint also has itm_score)
_SIGNATURE_KEYS = (
    ("vqa", "vqa_classifier.0.weight"),
    ("nlvr2", "nlvr2_classifier.0.weight"),
    ("irtr", "rank_output.weight"),
    ("mlm_itm", "itm_score.fc.weight"),
)
_IRTR_DATASETS = {"irtr_f30k": ("f30k", "flickr"), "irtr_coco": ("coco",)}

# original name prefix -> ours (original-vilt.md §6.2); names not listed stay as they are
_RENAMES = [
    (re.compile(r"^transformer\.blocks\.(\d+)\.norm1\."), r"vilt.encoder.layer.\1.layernorm_before."),
    (
        re.compile(r"^transformer\.blocks\.(\d+)\.attn\.proj\."),
        r"vilt.encoder.layer.\1.attention.output.dense.",
    ),
    (re.compile(r"^transformer\.blocks\.(\d+)\.norm2\."), r"vilt.encoder.layer.\1.layernorm_after."),
    (re.compile(r"^transformer\.blocks\.(\d+)\.mlp\.fc1\."), r"vilt.encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^transformer\.blocks\.(\d+)\.mlp\.fc2\."), r"vilt.encoder.layer.\1.output.dense."),
    (re.compile(r"^text_embeddings\."), "vilt.embeddings.text_embeddings."),
    (re.compile(r"^transformer\.cls_token$"), "vilt.embeddings.cls_token"),
    (re.compile(r"^transformer\.pos_embed$"), "vilt.embeddings.position_embeddings"),
    (re.compile(r"^transformer\.patch_embed\.proj\."), "vilt.embeddings.patch_embeddings.projection."),
    (re.compile(r"^token_type_embeddings\."), "vilt.embeddings.token_type_embeddings."),
    (re.compile(r"^transformer\.norm\."), "vilt.layernorm."),
    (re.compile(r"^pooler\.dense\."), "vilt.pooler.dense."),
    (re.compile(r"^(vqa|nlvr2)_classifier\."), "classifier."),
    (re.compile(r"^mlm_score\.bias$"), "mlm_score.decoder.bias"),
]
_QKV = re.compile(r"^transformer\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
# tensors no conversion keeps: a buffer and the masked-patch head (unused in the paper); retrieval
# conversions also drop the ITM head their rank_output was initialised from
_DROPPED = re.compile(r"(^text_embeddings\.position_ids$|^mpp_score\.)")


# ----------------------------------------------------------------------------- reading


def read_original_checkpoint(src: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state dict and the training config of an original ``.ckpt``, read safely.

    Args:
        src: a Lightning ``.ckpt`` (weights under ``"state_dict"``) or a file holding the state dict only.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ViltInputError: ``src`` is a folder, or a file that is no PyTorch checkpoint (empty, an image, text,
            safetensors, another zip archive, a truncated checkpoint), or holds no state dict.
        ValueError: the pickle refers to code.
    """
    _check_torch_file(Path(src))
    import torch

    from .checkpoint import read_torch_file

    checkpoint = read_torch_file(src)
    if not isinstance(checkpoint, dict):
        raise ViltInputError(f"{src} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ViltInputError(f"{src} holds no state dict of tensors")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    hyper = checkpoint.get("hyper_parameters")
    hyper = hyper if isinstance(hyper, dict) else {}
    training_config = hyper.get("config", hyper)  # ViLT saves its sacred config as hparams["config"]
    return state, training_config if isinstance(training_config, dict) else {}


def _check_torch_file(path: Path) -> None:
    """Refuse, from its first bytes, a file that ``torch.load`` cannot read as a checkpoint.

    ``torch.save`` writes a zip archive holding ``<name>/data.pkl`` (the format since PyTorch 1.6) or,
    in the legacy format, a pickle (first byte 0x80). Anything else would reach the unpickler as garbage.
    """
    expected = "pass an original ViLT .ckpt (a PyTorch-Lightning checkpoint of dandelin/ViLT)"
    if path.is_dir():
        raise ViltInputError(f"{path} is a folder; {expected}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected an original ViLT .ckpt file)")
    with path.open("rb") as file:
        head = file.read(16)
    if not head:
        raise ViltInputError(f"{path} is empty (0 bytes); download the checkpoint again")
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        raise ViltInputError(
            f"{path} is a safetensors file, not an original ViLT .ckpt; a model directory holding it loads "
            "as it is (from_pretrained, --model DIR)"
        )
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise ViltInputError(
                f"{path} is truncated or corrupt (not a complete zip archive, as torch.save writes); "
                "download it again"
            ) from None
        if not any(name.endswith("/data.pkl") for name in names):
            raise ViltInputError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl); {expected}"
            )
    elif not head.startswith(b"\x80"):
        raise ViltInputError(
            f"{path} is not a PyTorch checkpoint (it begins {head[:8]!r}: neither a zip archive nor a "
            f"pickle); {expected}"
        )


def _family(state: dict[str, Any]) -> str | None:
    """vqa, nlvr2, irtr or mlm_itm: the first head signature the checkpoint has."""
    return next((family for family, key in _SIGNATURE_KEYS if key in state), None)


def detect_kind(state: dict[str, Any], hint: str = "", training_config: dict[str, Any] | None = None) -> str:
    """Which of :data:`KINDS` a checkpoint is, from the heads it carries.

    Args:
        state: the original state dict.
        hint: the file name; tells COCO from Flickr30k retrieval (``irtr_coco`` / ``irtr_f30k``).
        training_config: the checkpoint's training config; its ``datasets`` / ``exp_name`` also tell them apart.

    Raises:
        ValueError: no known head, or a retrieval checkpoint of unknown dataset.
    """
    family = _family(state)
    if family is None:
        heads = sorted(
            {k.split(".")[0] for k in state if not k.startswith(("transformer.", "text_embeddings."))}
        )
        converted = (
            " (its names are vilt's and transformers': it is converted already)" if "vilt" in heads else ""
        )
        raise ViltInputError(
            f"{hint or 'this checkpoint'} is not an original ViLT checkpoint of a known kind: it has none of "
            f"the heads {', '.join(key.split('.')[0] for _, key in _SIGNATURE_KEYS)} (its top-level modules: "
            f"{heads}){converted}"
        )
    if family != "irtr":
        return family
    config = training_config or {}
    clues = " ".join(
        [Path(hint).name, str(config.get("exp_name", "")), *map(str, config.get("datasets", []))]
    )
    found = [kind for kind, words in _IRTR_DATASETS.items() if any(w in clues.lower() for w in words)]
    if len(found) != 1:
        raise ValueError(
            f"{hint or 'this checkpoint'} is a retrieval checkpoint, but neither its name nor its training config "
            "says whether it was fine-tuned on COCO or Flickr30k: pass kind='irtr_coco' or kind='irtr_f30k'"
        )
    return found[0]


def _check_kind(state: dict[str, Any], kind: str, src: str | os.PathLike[str]) -> str:
    """``kind`` itself, once the checkpoint's heads agree with it."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {', '.join(KINDS)}")
    family = _family(state)
    if family is None or not kind.startswith(family):
        found = (
            f"its heads are those of a {family} checkpoint" if family else "it has none of the original heads"
        )
        raise ValueError(f"{src} is not a {kind} checkpoint: {found} (leave out the kind to detect it)")
    return kind


# ----------------------------------------------------------------------------- mapping


def map_original_keys(state: dict[str, Any], kind: str) -> dict[str, Any]:
    """Rename the original tensors to ours and split each fused ``attn.qkv`` into query, key and value.

    Args:
        state: the original state dict.
        kind: one of :data:`KINDS`; retrieval kinds drop the ITM head.
    """
    drop_itm = kind.startswith("irtr")
    mapped: dict[str, Any] = {}
    for key, tensor in state.items():
        if _DROPPED.search(key) or (drop_itm and key.startswith("itm_score.")):
            continue
        qkv = _QKV.match(key)
        if qkv:
            layer, param = qkv.groups()
            mapped.update(_split_qkv(layer, param, tensor))
        else:
            new = next((pattern.sub(target, key) for pattern, target in _RENAMES if pattern.search(key)), key)
            mapped[new] = tensor
    return mapped


def _split_qkv(layer: str, param: str, fused: Any) -> dict[str, Any]:
    """One layer's fused ``attn.qkv`` weight or bias as our query, key and value tensors."""
    prefix = f"vilt.encoder.layer.{layer}.attention.attention"
    parts = fused.chunk(3, dim=0)  # rows q | k | v: (3D, D) -> 3 x (D, D), or (3D,) -> 3 x (D,)
    return {f"{prefix}.{name}.{param}": part.clone() for name, part in zip(("query", "key", "value"), parts)}


def _num_heads(hidden: int, training_config: dict[str, Any]) -> int:
    heads = training_config.get("num_heads")
    if isinstance(heads, int) and heads > 0:
        return heads
    if hidden % 64 == 0:
        return hidden // 64  # ViT-B: heads of width 64
    raise ValueError(
        f"the checkpoint does not say how many attention heads its {hidden}-wide layers have: pass num_attention_heads"
    )


def read_answers(answers: str | os.PathLike[str] | list[str] | dict[Any, Any]) -> dict[int, str]:
    """An answer vocabulary as ``id2label``.

    Args:
        answers: a JSON file or object: a list of answers, an ``{id: answer}`` dict (the original
            ``vqa_dict.json``, hub ``id2label`` files) or an ``{answer: id}`` dict.

    Raises:
        ValueError: the ids are not integers or an answer list is not strings.
    """
    if isinstance(answers, (str, os.PathLike)):
        try:
            answers = json.loads(Path(answers).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the answer list {answers}: {err}") from None
    if isinstance(answers, list):
        return {i: str(answer) for i, answer in enumerate(answers)}
    if not isinstance(answers, dict) or not answers:
        raise ValueError("answers must be a list of answers or an {id: answer} dict (like vqa_dict.json)")
    if all(str(k).lstrip("-").isdigit() for k in answers):
        return {int(k): str(v) for k, v in answers.items()}
    if all(isinstance(v, int) for v in answers.values()):
        return {v: str(k) for k, v in answers.items()}
    raise ValueError("answers must map integer ids to answers ({'0': 'yes', ...}) or answers to ids")


def _complete_labels(id2label: dict[int, str], num_labels: int) -> dict[int, str]:
    """``id2label`` for every one of ``num_labels`` outputs; ids the list skips get LABEL_i (with a warning)."""
    outside = sorted(i for i in id2label if not 0 <= i < num_labels)
    if outside:
        raise ValueError(
            f"the answer list has ids {outside[:5]} outside the classifier's {num_labels} outputs: is it the list "
            "this checkpoint was trained with?"
        )
    gaps = [i for i in range(num_labels) if i not in id2label]
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (f" and {len(gaps) - 10} more" if len(gaps) > 10 else "")
        logger.warning("the answer list has no answer for ids [%s]; they are named LABEL_<id>", shown)
    return {i: id2label.get(i, f"LABEL_{i}") for i in range(num_labels)}


def build_config(
    state: dict[str, Any],
    kind: str,
    training_config: dict[str, Any] | None = None,
    answers: str | os.PathLike[str] | list[str] | dict[Any, Any] | None = None,
    **overrides: Any,
) -> Any:
    """The :class:`~vilt.ViltConfig` of a mapped state dict: sizes from the tensors, heads from the
    training config, labels from the kind.

    Args:
        state: the state dict in our names (:func:`map_original_keys`).
        kind: one of :data:`KINDS`.
        training_config: the checkpoint's training config (``num_heads``).
        answers: for ``vqa``, the answer vocabulary (see :func:`read_answers`).
        **overrides: config fields to set explicitly.
    """
    from .configuration import ViltConfig

    patch = state["vilt.embeddings.patch_embeddings.projection.weight"]  # (D, C, P, P)
    positions = state["vilt.embeddings.position_embeddings"].shape[1] - 1  # G * G patch positions + CLS
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"transformer.pos_embed has {positions} patch positions, not a square grid")
    hidden = patch.shape[0]
    layers = {int(m.group(1)) for k in state if (m := re.match(r"vilt\.encoder\.layer\.(\d+)\.", k))}
    fields: dict[str, Any] = dict(
        vocab_size=state["vilt.embeddings.text_embeddings.word_embeddings.weight"].shape[0],
        type_vocab_size=state["vilt.embeddings.text_embeddings.token_type_embeddings.weight"].shape[0],
        max_position_embeddings=state["vilt.embeddings.text_embeddings.position_embeddings.weight"].shape[0],
        modality_type_vocab_size=state["vilt.embeddings.token_type_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        intermediate_size=state["vilt.encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_channels=patch.shape[1],
        patch_size=patch.shape[-1],
        image_size=grid * patch.shape[-1],
        qkv_bias="vilt.encoder.layer.0.attention.attention.query.bias" in state,
        tie_word_embeddings=False,  # the original decoder has its own weight
        architectures=list(ARCHITECTURES[kind]),
    )
    if "num_attention_heads" not in overrides:
        fields["num_attention_heads"] = _num_heads(hidden, training_config or {})
    if kind == "vqa":
        num_labels = state["classifier.3.weight"].shape[0]
        if answers is None:
            logger.warning(
                "no answer list given: the %d answers are named LABEL_<id>; pass vqa_dict.json", num_labels
            )
        fields["id2label"] = (
            _complete_labels(read_answers(answers), num_labels) if answers is not None else None
        )
        fields["num_labels"] = num_labels
    elif kind == "nlvr2":
        fields.update(num_images=2, id2label={0: "False", 1: "True"})
    return ViltConfig(**{**fields, **overrides})


# ----------------------------------------------------------------------------- converting


def _check_loads(architecture: str, config: Any, state: dict[str, Any]) -> tuple[Any, set[str]]:
    """Build ``architecture`` and load ``state`` into it; every weight must be found, at the right shape.

    Returns:
        The model and the keys of ``state`` it used.

    Raises:
        ValueError: a weight is missing or has the wrong shape.
    """
    from .checkpoint import load_into
    from .heads import MODEL_CLASSES

    model = MODEL_CLASSES[architecture](config)
    info = load_into(model, state, source=f"the converted checkpoint ({architecture})")
    if info.missing_keys:
        raise ValueError(
            f"the checkpoint lacks weights {architecture} needs: {info.missing_keys[:8]}; is it an original "
            "ViLT checkpoint of this kind?"
        )
    return model, set(state) - set(info.unexpected_keys)


def convert_original_checkpoint(
    src_ckpt: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    kind: str | None = None,
    answers: str | os.PathLike[str] | list[str] | dict[Any, Any] | None = None,
    *,
    overwrite: bool = False,
    save_processor: bool = True,
    max_shard_size: int | str = "5GB",
    **config_overrides: Any,
) -> Any:
    """Convert an original ViLT ``.ckpt`` into a model directory and return the model.

    Args:
        src_ckpt: the original checkpoint, e.g. ``vilt_200k_mlm_itm.ckpt``.
        dest_dir: the directory to write (config.json, model.safetensors, processor files), all at once:
            killed at any moment, it holds its earlier contents or the whole conversion.
        kind: one of :data:`KINDS`; detected from the heads present (and the file name) when None.
        answers: for ``vqa``, the answer vocabulary: ``vqa_dict.json``, another ``{id: answer}`` JSON file,
            or a list or dict (see :func:`read_answers`). Without it the labels are LABEL_0...LABEL_3128.
        overwrite: replace the files of an existing, non-empty ``dest_dir``.
        save_processor: also write the processor files (image processor and tokenizer).
        max_shard_size: shard the weights above this size.
        **config_overrides: config fields to set, e.g. ``num_attention_heads`` when the checkpoint has
            no training config.

    Returns:
        The converted model, in eval mode: for ``mlm_itm`` the ViltForMaskedLM
        (``ViltForImageTextMatching.from_pretrained(dest_dir)`` loads the ITM head from the same directory).

    Raises:
        FileNotFoundError: ``src_ckpt`` does not exist.
        FileExistsError: ``dest_dir`` is not empty and ``overwrite`` is False.
        ViltInputError: ``dest_dir`` is the current directory (or holds it), or holds ``src_ckpt``
            (:func:`vilt.files.check_output_directory`).
        ValueError: the file is unsafe, not an original ViLT checkpoint, or not of ``kind``.
    """
    from .checkpoint import is_weight_file, save_state_dict

    dest = Path(dest_dir)
    check_output_directory(
        dest, force=overwrite, inputs=[src_ckpt], replaced="the weights and config of an earlier conversion"
    )
    state, training_config = read_original_checkpoint(src_ckpt)
    detected = (
        detect_kind(state, str(src_ckpt), training_config)
        if kind is None
        else _check_kind(state, kind, src_ckpt)
    )
    if answers is not None and detected != "vqa":
        raise ValueError(f"answers apply to VQA checkpoints only; {src_ckpt} is a {detected} checkpoint")
    logger.info("converting %s as a %s checkpoint (%d tensors)", src_ckpt, detected, len(state))
    mapped = map_original_keys(state, detected)
    config = build_config(mapped, detected, training_config, answers, **config_overrides)
    config.extra["converted_from"] = {"file": Path(src_ckpt).name, "kind": detected}
    architectures = ARCHITECTURES[detected]
    model, used = _check_loads(architectures[0], config, mapped)
    for architecture in architectures[1:]:
        used |= _check_loads(architecture, config, mapped)[1]
    unused = sorted(set(mapped) - used)
    if unused:
        raise ValueError(f"{src_ckpt} has weights no {detected} model uses: {unused[:8]}")
    # the weights, config and processor files appear together, whenever the process is killed
    with atomic_directory(dest, keep_old=lambda name: not is_weight_file(name)) as staging:
        save_state_dict(mapped, config, staging, max_shard_size=max_shard_size)
        if save_processor:
            _processor_for(config).save_pretrained(staging)
    logger.info("wrote %s (%s)", dest, ", ".join(architectures))
    return model.eval()


def _processor_for(config: Any) -> Any:
    """The processor matching the converted model's image grid and text length."""
    from .image_processing import ViltImageProcessor
    from .processing import ViltProcessor
    from .tokenization import ViltTokenizer

    return ViltProcessor(
        ViltImageProcessor(size=config.image_size, size_divisor=config.patch_size),
        ViltTokenizer(model_max_length=config.max_position_embeddings),
    )


# ----------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``vilt convert`` to the ``vilt`` parser."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an original ViLT .ckpt into a model directory",
        description="Convert one of the original dandelin/ViLT PyTorch-Lightning checkpoints "
        f"({', '.join(KINDS)}) into a directory that vilt and transformers load. The file is read "
        "without running any code it may contain.",
        epilog="example: vilt convert vilt_vqa.ckpt vilt-vqa/ --answers vqa_dict.json",
    )
    parser.add_argument("src", metavar="SRC.ckpt", help="the original checkpoint file")
    parser.add_argument("dest", metavar="DEST_DIR", help="the directory to write")
    parser.add_argument(
        "--kind", choices=KINDS, help="checkpoint kind (default: detected from its heads and name)"
    )
    parser.add_argument(
        "--answers", metavar="JSON", help="VQA answer list: vqa_dict.json or an id2label JSON file"
    )
    parser.add_argument("--force", action="store_true", help="overwrite DEST_DIR if it is not empty")
    parser.set_defaults(
        handler=run_convert,
        checks=[
            check.input_file("src", "SRC.ckpt"),
            check.input_file("answers", "--answers"),
            check.output_directory("dest", inputs=lambda args: [args.src]),
        ],
    )


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``vilt convert``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with announce_slow(f"vilt convert: reading {args.src} (torch, then the checkpoint)..."):
        model = convert_original_checkpoint(
            args.src, args.dest, args.kind, args.answers, overwrite=args.force
        )
    names = " and ".join(model.config.architectures)
    print(f"wrote {args.dest}: load it with {names}.from_pretrained({str(args.dest)!r})")
    return 0
