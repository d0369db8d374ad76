"""Corpus-scale retrieval: every text against every image, exactly, sharded over Ray tasks.

ViLT has no separate encoders, so ranking N images against M texts takes N x M transformer passes. This
module spends them once and nothing more:

1. **Image tokens, once per image, on disk.** Ray tasks embed blocks of images (the patch projection and
   positions, :meth:`embed_images`) and store each image's tokens in ``cache_dir`` as a safetensors file
   named by the image's checksum under the model's fingerprint (its image embedding weights, processor
   settings and dtype). Later runs, other texts and other corpora reuse them.
2. **Texts, tokenized once** by the driver, padded per block of texts and shared through the object store.
3. **Blocks of images x blocks of texts** are Ray tasks: each loads its images' tokens, scores every pair
   with :meth:`match_scores` in batches of ``batch_size`` pairs, and returns the top ``k`` images of each of
   its texts and the top ``k`` texts of each of its images. The driver commits each block's answer as
   one file (``blocks/``, written atomically), so a rerun skips finished blocks.
4. The driver merges the blocks' lists into the top ``k`` per text and per image, and with ground truth
   (which images each text describes) computes R@1/5/10 in both directions.

Bad images and empty texts are kept with their error (``images.parquet``, ``texts.parquet``) and ranked
last. Outputs in ``output``: ``text_to_images.parquet``, ``image_to_texts.parquet``, ``metrics.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ViltInputError
from ..files import atomic_write
from ..images import DEFAULT_TIMEOUT, is_url
from . import parts
from .cluster import connect

logger = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
BLOCKS = "blocks"


# ----------------------------------------------------------------------------- the model in a worker


@dataclass
class _Scorer:
    pipe: Any  # the image-text retrieval pipeline (model, processor, device, dtype)
    fingerprint: str  # what image tokens depend on: the image embedding weights, processor, dtype


@functools.lru_cache(maxsize=2)
def _scorer(model: str, device: str | None, dtype: str | None) -> _Scorer:
    """The retrieval pipeline of a worker process, loaded once, with the model's fingerprint."""
    import torch

    from ..pipelines import pipeline

    pipe = pipeline("image-text-retrieval", model, device=device, dtype=dtype)
    digest = hashlib.sha256()
    embeddings = pipe.model.vilt.embeddings
    for name, tensor in sorted(embeddings.state_dict().items()):
        if not name.startswith("text_embeddings"):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(pipe.processor.image_processor.to_json_string().encode())
    digest.update(str(pipe.dtype).encode())
    return _Scorer(pipe, digest.hexdigest()[:24])


def image_key(image: Any) -> str:
    """What names an image in the cache: the SHA-256 of a file's bytes, or of the value itself (a URL,
    base64 text)."""
    if isinstance(image, str) and not is_url(image) and len(image) < 4096 and os.path.isfile(image):
        return parts.file_checksum(image)
    return hashlib.sha256(repr(image).encode()).hexdigest()


def _cache_file(cache_dir: str, fingerprint: str, key: str) -> Path:
    return Path(cache_dir) / fingerprint / key[:2] / f"{key}.safetensors"


def embed_images(
    images: Sequence[Any], model: str, cache_dir: str, device: str | None, dtype: str | None, timeout: float
) -> list[tuple[str, str | None]]:
    """Store the image tokens of ``images`` in the cache (those not there yet); each image's cache key and
    error (None when its tokens are in the cache)."""
    from safetensors.torch import save_file

    scorer = _scorer(model, device, dtype)
    pipe = scorer.pipe
    done: list[tuple[str, str | None]] = []
    for index, image in enumerate(images):
        key = image_key(image)
        try:
            path = _cache_file(cache_dir, scorer.fingerprint, key)
            if path.exists():
                done.append((key, None))
                continue
            item = pipe._image_input([image], None, f" (image {index})", timeout)
            pixels = pipe.processor.image_processor(pipe._load_images(item), return_tensors="pt")
            tokens = pipe._embed(pixels)  # embeddings (1, 1 + Li, D), mask (1, 1 + Li)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {"embeddings": tokens.embeddings[0].contiguous(), "mask": tokens.mask[0].contiguous()}
            atomic_write(path, functools.partial(save_file, tensors))
            done.append((key, None))
        except (ValueError, OSError, TypeError) as err:
            done.append((key, f"{type(err).__name__}: {err}"))
    return done


def _load_tokens(
    keys: Sequence[str], model: str, cache_dir: str, device: str | None, dtype: str | None
) -> Any:
    """The cached tokens of a block of images, padded into one :class:`vilt.modeling.ImageTokens`."""
    import torch
    from safetensors.torch import load_file

    from ..modeling import ImageTokens

    scorer = _scorer(model, device, dtype)
    loaded = [load_file(_cache_file(cache_dir, scorer.fingerprint, key)) for key in keys]
    length = max(tokens["mask"].shape[0] for tokens in loaded)
    width = loaded[0]["embeddings"].shape[1]
    embeddings = torch.zeros(len(loaded), length, width, dtype=loaded[0]["embeddings"].dtype)  # (Ni, T, D)
    mask = torch.zeros(len(loaded), length, dtype=torch.long)  # (Ni, T), 0 on padding
    for row, tokens in enumerate(loaded):
        n = tokens["mask"].shape[0]
        embeddings[row, :n], mask[row, :n] = tokens["embeddings"], tokens["mask"]
    device_ = scorer.pipe.device
    return ImageTokens(embeddings.to(device_), mask.to(device_), None, None)


def score_block(
    keys: Sequence[str],
    tokens: dict[str, np.ndarray],
    model: str,
    cache_dir: str,
    device: str | None,
    dtype: str | None,
    batch_size: int,
) -> np.ndarray:
    """(Ni, Mj) float32 scores of a block of cached images against a block of tokenized texts."""
    import torch

    from ..feature import BatchFeature
    from ..pipelines.retrieval import _pair_batches

    scorer = _scorer(model, device, dtype)
    images = _load_tokens(keys, model, cache_dir, device, dtype)
    texts = BatchFeature({key: torch.from_numpy(value) for key, value in tokens.items()}).to(
        scorer.pipe.device
    )
    num_texts = tokens["input_ids"].shape[0]
    scores = np.zeros((len(keys), num_texts), dtype=np.float32)
    for rows, cols in _pair_batches(len(keys), num_texts, batch_size):
        scores[rows, cols] = scorer.pipe._score(texts, cols, images, rows)
    return scores


def top_k_indices(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``k`` best scores, best first (ties: the lower column), and the scores."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (rows, k)
    return order, np.take_along_axis(scores, order, axis=1)


# ----------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """What to rank: images, texts, and optionally which images each text describes."""

    images: list[Any]
    texts: list[str]
    image_ids: list[Any]  # how outputs name the images (the table's ``id``, else the row)
    text_ids: list[Any]
    relevant: list[list[int]] | None  # per text, the rows of the images it describes


def read_corpus(
    images: str | os.PathLike[str] | None = None,
    texts: str | os.PathLike[str] | None = None,
    pairs: str | os.PathLike[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Corpus:
    """A corpus from tables: ``images`` (column ``image``, optional ``id``) and ``texts`` (column ``text``,
    optional ``id`` and ground truth ``image_ids``: a list of the images' ids, or ``image_id``: one);
    or ``pairs``, one (``image``, ``text``) row per ground-truth pair (each distinct image once)."""
    from .batch import read_table

    if pairs is not None:
        table = read_table(pairs, image_root)
        for column in ("image", "text"):
            if column not in table.column_names:
                raise ViltInputError(f"{pairs} needs the columns image and text (one row per true pair)")
        rows = table.column("image").to_pylist()
        unique = list(dict.fromkeys(rows))
        position = {image: i for i, image in enumerate(unique)}
        text_values = table.column("text").to_pylist()
        return Corpus(unique, text_values, list(range(len(unique))), list(range(len(text_values))),
                      [[position[image]] for image in rows])  # fmt: skip
    if images is None or texts is None:
        raise ViltInputError("pass both an images table and a texts table, or one table of pairs")
    image_table, text_table = read_table(images, image_root), read_table(texts)
    if "image" not in image_table.column_names:
        raise ViltInputError(f"{images} needs an image column")
    if "text" not in text_table.column_names:
        raise ViltInputError(f"{texts} needs a text column")
    image_values = image_table.column("image").to_pylist()
    image_ids = (
        image_table.column("id").to_pylist()
        if "id" in image_table.column_names
        else list(range(len(image_values)))
    )
    text_values = text_table.column("text").to_pylist()
    text_ids = (
        text_table.column("id").to_pylist()
        if "id" in text_table.column_names
        else list(range(len(text_values)))
    )
    relevant = None
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    for column, as_list in (
        ("image_ids", lambda v: v or []),
        ("image_id", lambda v: [] if v is None else [v]),
    ):
        if column in text_table.column_names:
            relevant = []
            for j, value in enumerate(text_table.column(column).to_pylist()):
                unknown = [v for v in as_list(value) if v not in row_of]
                if unknown:
                    raise ViltInputError(f"text {j} of {texts} names unknown image id(s) {unknown[:3]}")
                relevant.append([row_of[v] for v in as_list(value)])
            break
    return Corpus(image_values, text_values, image_ids, text_ids, relevant)


# ----------------------------------------------------------------------------- the job


def rank(
    corpus: Corpus,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    address: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    top_k: int = 10,
    image_block: int = 100,
    text_block: int = 1000,
    batch_size: int = 256,
    task_cpus: float = 1.0,
    device: str | None = None,
    dtype: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank every text against every image of ``corpus`` on Ray; see the module docstring.

    Args:
        corpus: from :func:`read_corpus` (or built directly).
        model: a directory or hub id of a ViltForImageAndTextRetrieval or ViltForImageTextMatching.
        output: the job's directory (committed blocks, top-k tables, metrics); a rerun resumes there.
        address: None for an embedded local Ray; a cluster's address to join it.
        cache_dir: where image tokens are kept (default ``output/image-tokens``); on a cluster, a folder
            every node reads (a node that does not find an image's tokens embeds it again).
        top_k: images listed per text and texts per image (at least 10 are kept for R@10).
        image_block, text_block: images and texts per Ray task (a task scores their product).
        batch_size: pairs per forward pass.
        task_cpus: CPUs each task reserves.
        device, dtype: as for :func:`vilt.pipeline`.
        timeout: seconds to wait for an image URL.
        overwrite: start afresh in a directory that holds another job.
        progress: show a progress bar.

    Returns:
        The metrics (also in ``metrics.json``): pairs, seconds, pairs per second, and with ground truth
        R@1/5/10 text-to-image and image-to-text.
    """
    from tqdm.auto import tqdm

    from ..pipelines.base import check_batch_size, check_top_k

    check_top_k(top_k)
    check_batch_size(batch_size)
    for name, value in (("image_block", image_block), ("text_block", text_block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ViltInputError(f"{name} must be a positive integer, got {value!r}")
    if not corpus.images or not corpus.texts:
        raise ViltInputError("the corpus needs at least one image and one text")
    model, output = os.fspath(model), Path(output)
    cache = os.fspath(cache_dir) if cache_dir is not None else os.fspath(output / "image-tokens")
    keep = max(top_k, *RECALL_AT)
    text_ranges = parts.part_ranges(len(corpus.texts), text_block)
    image_ranges = parts.part_ranges(len(corpus.images), image_block)
    job = {"task": "rank", "model": model, "images": len(corpus.images), "texts": len(corpus.texts),
           "corpus_sha256": _corpus_checksum(corpus), "image_block": image_block, "text_block": text_block,
           "keep": keep, "dtype": dtype}  # fmt: skip
    parts.open_job(output, job, overwrite)
    (output / BLOCKS).mkdir(exist_ok=True)
    ray = connect(address)
    started = time.perf_counter()

    # 1. image tokens, once per image (each task reads its images' files and names them by checksum)
    embed = ray.remote(num_cpus=task_cpus)(embed_images)
    pending = [
        embed.remote(corpus.images[a:b], model, cache, device, dtype, timeout) for a, b in image_ranges
    ]
    embedded_images = [pair for block in ray.get(pending) for pair in block]
    keys = [key for key, _ in embedded_images]
    image_errors = [error for _, error in embedded_images]
    embedded = time.perf_counter()

    # 2. texts, tokenized once
    scorer = _scorer(model, device, dtype)
    text_errors, tokens = _tokenize(corpus.texts, scorer.pipe)
    good_images = [i for i, e in enumerate(image_errors) if e is None]

    # 3. blocks of images x blocks of texts
    score = ray.remote(num_cpus=task_cpus)(_score_block_top_k)
    blocks = {}
    for a, b in image_ranges:
        rows = [i for i in range(a, b) if image_errors[i] is None]
        for c, d in text_ranges:
            path = output / BLOCKS / f"i{a:09d}-{b:09d}_t{c:09d}-{d:09d}.npz"
            if path.exists() or not rows:
                continue
            block_tokens = ray.put({
                **_pad_tokens(tokens[c:d], scorer.pipe.processor.tokenizer.pad_token_id),
                "valid": np.array([e is None for e in text_errors[c:d]]),
            })  # fmt: skip
            blocks[score.remote(rows, [keys[i] for i in rows], c, block_tokens, keep, model, cache,
                                device, dtype, batch_size)] = (path, len(rows) * (d - c))  # fmt: skip
    total_pairs = len(good_images) * len(corpus.texts)
    with tqdm(total=sum(n for _, n in blocks.values()), desc="vilt batch rank", unit="pair",
              unit_scale=True, disable=not progress) as bar:  # fmt: skip
        remaining = list(blocks)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            path, pairs = blocks[done[0]]
            arrays = ray.get(done[0])
            atomic_write(path, functools.partial(_save_npz, arrays=arrays))
            bar.update(pairs)
    scored = time.perf_counter()

    # 4. merge and measure
    result = _merge(output, len(corpus.images), len(corpus.texts), keep)
    metrics: dict[str, Any] = {
        "images": len(corpus.images), "texts": len(corpus.texts), "pairs": total_pairs,
        "bad_images": len(corpus.images) - len(good_images), "bad_texts": sum(e is not None for e in text_errors),
        "pairs_scored_this_run": sum(n for _, n in blocks.values()),
        "seconds_embedding": round(embedded - started, 2), "seconds_scoring": round(scored - embedded, 2),
    }  # fmt: skip
    if metrics["pairs_scored_this_run"]:
        metrics["pairs_per_second"] = round(
            metrics["pairs_scored_this_run"] / max(scored - embedded, 1e-9), 1
        )
    if corpus.relevant is not None:
        metrics.update(
            recall_at_k(result["text_top"], result["image_top"], corpus.relevant, len(corpus.images))
        )
    _write_tables(output, corpus, result, image_errors, text_errors, top_k)
    atomic_write(
        output / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1) + "\n")
    )
    return metrics


def _score_block_top_k(
    rows: list[int], keys: list[str], first_text: int, tokens: dict[str, np.ndarray], keep: int,
    model: str, cache: str, device: str | None, dtype: str | None, batch_size: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """A block's top ``keep`` images per text and texts per image, as global rows and columns."""
    import ray

    missing = [
        key for key in keys if not _cache_file(cache, _scorer(model, device, dtype).fingerprint, key).exists()
    ]
    if missing:  # another node's cache: embed here (only the images of this block are known by key)
        raise RuntimeError(
            f"{len(missing)} image token file(s) are not in {cache} on node {ray.get_runtime_context().get_node_id()}; "
            "on a cluster, pass a cache_dir on storage that every node reads"
        )
    valid = tokens.pop("valid")  # (Mj,) False for a text with an error: ranked nowhere
    scores = score_block(keys, tokens, model, cache, device, dtype, batch_size)  # (Ni, Mj)
    scores[:, ~valid] = -np.inf
    text_top, text_scores = top_k_indices(scores.T, keep)  # (Mj, k) local image rows
    image_top, image_scores = top_k_indices(scores, keep)  # (Ni, k) local text columns
    rows_ = np.asarray(rows)
    text_top[~valid] = -1
    image_top = np.where(np.isfinite(image_scores), image_top, -1 - first_text)
    return {
        "rows": rows_, "first_text": np.asarray(first_text),
        "text_top": np.where(text_top >= 0, rows_[text_top], -1), "text_scores": text_scores,
        "image_top": image_top + first_text, "image_scores": image_scores,
    }  # fmt: skip


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)  # numbers only, as np.load reads them


def _corpus_checksum(corpus: Corpus) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(i) for i in corpus.images], corpus.texts], ensure_ascii=False).encode())
    return digest.hexdigest()


def _tokenize(texts: Sequence[Any], pipe: Any) -> tuple[list[str | None], list[list[int]]]:
    """Each text's token ids (cut to the model's length), once; an empty or non-text one gets its error."""
    from ..pipelines.base import check_text

    errors: list[str | None] = []
    checked = []
    for j, text in enumerate(texts):
        try:
            checked.append(check_text(text, f"text {j}"))
            errors.append(None)
        except ValueError as err:
            checked.append("[UNK]")
            errors.append(f"{type(err).__name__}: {err}")
    pipe._warn_if_truncated(checked, [f"text {j}" for j in range(len(texts))])
    ids = pipe.processor.tokenizer(
        checked, truncation=True, max_length=pipe.config.max_position_embeddings,
        return_attention_mask=False, return_token_type_ids=False,
    )["input_ids"]  # fmt: skip
    return errors, ids


def _pad_tokens(ids: Sequence[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """A block of token id lists padded as the tokenizer pads a batch (right, attention mask 0)."""
    length = max(len(row) for row in ids)
    input_ids = np.full((len(ids), length), pad_id, dtype=np.int64)
    attention = np.zeros((len(ids), length), dtype=np.int64)
    for j, row in enumerate(ids):
        input_ids[j, : len(row)], attention[j, : len(row)] = row, 1
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": np.zeros_like(input_ids)}


def _merge(output: Path, num_images: int, num_texts: int, keep: int) -> dict[str, np.ndarray]:
    """The top ``keep`` per text and per image over all committed blocks (-1, -inf past the candidates)."""
    merged = {
        "text": (np.full((num_texts, 0), -1, np.int64), np.full((num_texts, 0), -np.inf, np.float32)),
        "image": (np.full((num_images, 0), -1, np.int64), np.full((num_images, 0), -np.inf, np.float32)),
    }
    for path in sorted((output / BLOCKS).glob("*.npz")):
        with np.load(path) as block:
            first = int(block["first_text"])
            texts = np.arange(first, first + block["text_top"].shape[0])
            for side, queries, size in (("text", texts, num_texts), ("image", block["rows"], num_images)):
                top, scores = block[f"{side}_top"], block[f"{side}_scores"]
                cols = np.full((size, top.shape[1]), -1, np.int64)
                vals = np.full((size, top.shape[1]), -np.inf, np.float32)
                cols[queries], vals[queries] = top, scores
                merged[side] = _best(*merged[side], cols, vals, keep)
    (text_top, text_scores), (image_top, image_scores) = merged["text"], merged["image"]
    return {
        "text_top": text_top,
        "text_scores": text_scores,
        "image_top": image_top,
        "image_scores": image_scores,
    }


def _best(
    idx: np.ndarray, sc: np.ndarray, new_idx: np.ndarray, new_sc: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two candidate lists per row and keep the ``keep`` best (ties: the lower index)."""
    all_idx, all_sc = np.concatenate([idx, new_idx], 1), np.concatenate([sc, new_sc], 1)
    order = np.lexsort((np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx), -all_sc), axis=1)[:, :keep]
    return np.take_along_axis(all_idx, order, 1), np.take_along_axis(all_sc, order, 1)


def recall_at_k(
    text_top: np.ndarray, image_top: np.ndarray, relevant: Sequence[Sequence[int]], num_images: int
) -> dict[str, float]:
    """R@K both ways: the share of queries with a relevant item among their top K.

    Args:
        text_top: (M, k) image rows per text, best first (-1 past the candidates).
        image_top: (N, k) text rows per image, best first.
        relevant: per text, the rows of the images it describes (texts without any are not counted).
        num_images: N.
    """
    texts_of: list[set[int]] = [set() for _ in range(num_images)]
    for j, rows in enumerate(relevant):
        for i in rows:
            texts_of[i].add(j)
    metrics = {}
    queried_texts = [j for j, rows in enumerate(relevant) if rows]
    queried_images = [i for i in range(num_images) if texts_of[i]]
    for k in RECALL_AT:
        hits = sum(bool(set(text_top[j, :k].tolist()) & set(relevant[j])) for j in queried_texts)
        metrics[f"text_to_image_R@{k}"] = round(hits / max(len(queried_texts), 1), 4)
        hits = sum(bool(set(image_top[i, :k].tolist()) & texts_of[i]) for i in queried_images)
        metrics[f"image_to_text_R@{k}"] = round(hits / max(len(queried_images), 1), 4)
    return metrics


def _write_tables(
    output: Path, corpus: Corpus, result: dict[str, Any], image_errors: list[str | None],
    text_errors: list[str | None], top_k: int,
) -> None:  # fmt: skip
    """``text_to_images.parquet`` and ``image_to_texts.parquet``: each query's top ``top_k``, with errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(
        ids: list[Any], errors: list[str | None], top: np.ndarray, scores: np.ndarray, other_ids: list[Any]
    ) -> Any:
        names, values = [], []
        for row, score in zip(top[:, :top_k], scores[:, :top_k]):
            keep = row >= 0
            names.append([str(other_ids[i]) for i in row[keep]])
            values.append(score[keep].astype(float).tolist())
        return pa.table({"id": [str(i) for i in ids], "error": errors, "top": names, "scores": values})

    for name, arrays in (
        (
            "text_to_images",
            (corpus.text_ids, text_errors, result["text_top"], result["text_scores"], corpus.image_ids),
        ),
        (
            "image_to_texts",
            (corpus.image_ids, image_errors, result["image_top"], result["image_scores"], corpus.text_ids),
        ),
    ):
        data = table(*arrays)
        atomic_write(output / f"{name}.parquet", functools.partial(pq.write_table, data))


def retrieval_model_from_itm(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Save a pretrained model's ITM head as a ViltForImageAndTextRetrieval (``rank_output``), exactly.

    The ITM head gives two logits, "does not match" and "matches"; ``rank_output`` is their difference,
    the log-odds of a match: the same ranking as the ITM probability, one logit as the retrieval head has.

    Args:
        source: a ViltForPreTraining or ViltForImageTextMatching directory (e.g. ``vilt train --task
            pretrain``'s ``best``).
        destination: where the retrieval model and its processor go.
    """
    import torch

    from ..heads import ViltForImageAndTextRetrieval, ViltForImageTextMatching
    from ..processing import ViltProcessor

    itm = ViltForImageTextMatching.from_pretrained(source, torch_dtype=torch.float32)
    config = itm.config
    config.architectures = ["ViltForImageAndTextRetrieval"]
    model = ViltForImageAndTextRetrieval(config)
    state = {key: value for key, value in itm.state_dict().items() if not key.startswith("itm_score.")}
    weight, bias = itm.itm_score.fc.weight.detach(), itm.itm_score.fc.bias.detach()  # (2, D), (2,)
    state["rank_output.weight"] = (weight[1] - weight[0])[None]  # (1, D)
    state["rank_output.bias"] = (bias[1] - bias[0])[None]  # (1,)
    model.load_state_dict(state)
    model.save_pretrained(destination)
    ViltProcessor.from_pretrained(source).save_pretrained(destination)
