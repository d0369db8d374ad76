"""A Hugging Face hub cache laid out as ``hf download dandelin/vilt-b32-*`` leaves it, with tiny random
weights made by transformers (imported by the hub tests; pytest puts tests/ on sys.path).

Each repository gets the files of the published dandelin repos, in their old formats:

* ``config.json`` written by transformers 4.16 (``architectures``, ``id2label``/``label2id``,
  ``torch_dtype``, ``transformers_version``); the VQA repo names its class by its historical name
  ``ViltForVisualQuestionAnswering``;
* ``preprocessor_config.json`` of a ``ViltFeatureExtractor``: ``size`` 384 as an int,
  ``size_divisor`` 32, ``resample`` 3, no ``do_rescale``/``do_pad`` keys;
* ``tokenizer_config.json`` (``tokenizer_class`` ``BertTokenizer``, ``model_max_length`` 40),
  ``special_tokens_map.json`` and ``vocab.txt``, without ``tokenizer.json``;
* ``pytorch_model.bin`` in the transformers v4 layout: the ``position_ids`` buffer saved with the
  weights, and for the MLM repo both ``mlm_score.bias`` and ``mlm_score.decoder.bias`` with a decoder
  that is not tied to the word embeddings;
* ``README.md`` and ``.gitattributes``.

The layout is huggingface_hub's: ``models--dandelin--NAME/blobs/<git or LFS hash>`` holds the bytes,
``snapshots/<commit>/<file>`` are relative symlinks ``../../blobs/<hash>``, and ``refs/main`` holds the
commit.
"""

from __future__ import annotations

import hashlib
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tiny import ODD_MLP_WIDTH, tiny_kwargs

VOCAB = resources.files("vilt") / "data" / "vocab.txt"
VQA_ANSWERS = ["yes", "no", "2", "1", "3", "cat", "cats", "couch", "white", "red"]
# repo name -> (transformers class that makes the weights, class named in config.json, config changes)
REPOS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "vilt-b32-mlm": ("ViltForMaskedLM", "ViltForMaskedLM", {}),
    "vilt-b32-finetuned-vqa": (
        "ViltForQuestionAnswering",
        "ViltForVisualQuestionAnswering",
        {"id2label": dict(enumerate(VQA_ANSWERS))},
    ),
    "vilt-b32-finetuned-nlvr2": (
        "ViltForImagesAndTextClassification",
        "ViltForImagesAndTextClassification",
        {"id2label": {0: "False", 1: "True"}, "num_images": 2, "modality_type_vocab_size": 3},
    ),
    "vilt-b32-finetuned-coco": ("ViltForImageAndTextRetrieval", "ViltForImageAndTextRetrieval", {}),
}
# the tiny model's width and depth (an odd MLP width), the real repos' other sizes: 384-pixel images in
# 32-pixel patches, 40 tokens, the bert-base-uncased vocabulary
TINY = tiny_kwargs(image_size=384, patch_size=32, intermediate_size=ODD_MLP_WIDTH)
PREPROCESSOR_CONFIG = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViltFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "size": 384,
    "size_divisor": 32,
}
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
TOKENIZER_CONFIG = {
    "do_lower_case": True,
    **SPECIAL_TOKENS,
    "tokenize_chinese_chars": True,
    "strip_accents": None,
    "model_max_length": 40,
    "special_tokens_map_file": None,
    "name_or_path": "bert-base-uncased",
    "tokenizer_class": "BertTokenizer",
}
GITATTRIBUTES = "*.bin filter=lfs diff=lfs merge=lfs -text\n*.bin.* filter=lfs diff=lfs merge=lfs -text\n"


def commit_of(name: str) -> str:
    """A fixed 40-hex commit id per repository."""
    return hashlib.sha1(name.encode()).hexdigest()


def _config_json(class_name: str, architecture: str, changes: dict[str, Any]) -> dict[str, Any]:
    """config.json as transformers 4.16 wrote it for the dandelin repos (every field, sorted keys)."""
    id2label = changes.get("id2label", {0: "LABEL_0", 1: "LABEL_1"})
    config = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "id2label": {str(k): v for k, v in id2label.items()},
        "initializer_range": 0.2,  # large, so that different inputs give clearly different answers
        "label2id": {v: k for k, v in id2label.items()},
        "layer_norm_eps": 1e-12,
        "max_image_length": -1,
        "max_position_embeddings": 40,
        "modality_type_vocab_size": changes.get("modality_type_vocab_size", 2),
        "model_type": "vilt",
        "num_channels": 3,
        "num_images": changes.get("num_images", -1),
        "qkv_bias": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.16.0.dev0",
        "type_vocab_size": 2,
        "vocab_size": 30522,
        **TINY,
    }
    return dict(sorted(config.items()))


def _weights(class_name: str, config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Random weights of the transformers class, as transformers v4 saved them in pytorch_model.bin."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(transformers.ViltConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():  # noise on everything, zero-initialised ones included
        state[key] = (tensor + 0.05 * torch.randn(tensor.shape, generator=generator)).contiguous()
    state["vilt.embeddings.text_embeddings.position_ids"] = torch.arange(40)[None]  # v4 kept the buffer
    if class_name == "ViltForMaskedLM":  # v4: an untied decoder, its bias saved under both names
        state["mlm_score.decoder.weight"] = 0.2 * torch.randn(30522, TINY["hidden_size"], generator=generator)
        state["mlm_score.bias"] = state["mlm_score.decoder.bias"]
    return state


def _files(name: str, seed: int) -> dict[str, bytes]:
    class_name, architecture, changes = REPOS[name]
    config = _config_json(class_name, architecture, changes)
    weights = io.BytesIO()
    torch.save(_weights(class_name, config, seed), weights)
    return {
        ".gitattributes": GITATTRIBUTES.encode(),
        "README.md": f"# {name}\n\nTiny random weights in the layout of dandelin/{name}.\n".encode(),
        "config.json": json.dumps(config, indent=2).encode(),
        "preprocessor_config.json": json.dumps(PREPROCESSOR_CONFIG, indent=2).encode(),
        "pytorch_model.bin": weights.getvalue(),
        "special_tokens_map.json": json.dumps(SPECIAL_TOKENS).encode(),
        "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG).encode(),
        "vocab.txt": VOCAB.read_bytes(),
    }


def _blob_name(filename: str, data: bytes) -> str:
    """The blob's name in the cache: the LFS sha256 for weights, the git blob sha1 for the rest."""
    if filename.endswith(".bin"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_repo(cache: Path, name: str, files: dict[str, bytes], commit: str, owner: str = "dandelin") -> Path:
    """Lay ``files`` out as one snapshot of ``owner/name`` in the hub cache ``cache``; returns the snapshot."""
    repo = cache / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for filename, data in files.items():
        blob = _blob_name(filename, data)
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / filename).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def make_hub_cache(cache: Path) -> Path:
    """Write the four dandelin repositories into ``cache`` (an ``HF_HUB_CACHE``); returns ``cache``."""
    for seed, name in enumerate(REPOS):
        write_repo(cache, name, _files(name, seed), commit_of(name))
    return cache
