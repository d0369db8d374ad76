"""Task pipelines on tiny random-weight models (and on the bundled easy-VQA model when present)."""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import BUNDLED, png_bytes, random_image, save_tiny

import vilt
from vilt.devices import cpu_supports_bf16, select_device_and_dtype
from vilt.heads import ViltForQuestionAnswering
from vilt.pipelines import top_k_per_row
from vilt.pipelines.base import prefetched, size_sorted_batches

# three sizes: after resizing (shorter side 32, multiples of 8) 32x48, 32x32 and 72x32
SIZES = [(24, 40), (32, 32), (50, 20)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    names = {
        "vqa": "ViltForQuestionAnswering",
        "nlvr2": "ViltForImagesAndTextClassification",
        "retrieval": "ViltForImageAndTextRetrieval",
        "itm": "ViltForImageTextMatching",
        "mlm": "ViltForMaskedLM",
        "tokens": "ViltForTokenClassification",
    }
    return {key: str(save_tiny(root / key, arch)) for key, arch in names.items()}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [random_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


@functools.cache
def make(task: str, directory: str) -> vilt.pipelines.Pipeline:
    """A float32 CPU pipeline (cached: pipelines keep no state between calls)."""
    return vilt.pipeline(task, model=directory, device="cpu", dtype="float32")


def assert_close(got: Any, want: Any, atol: float = 1e-5) -> None:
    """Same structure and equal non-float values (answers, labels, tokens); floats within ``atol``."""
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_close(got[key], want[key], atol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, atol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=atol)
    else:
        assert got == want


# ----------------------------------------------------------------------------- device and dtype


def test_auto_dtype_follows_the_cpu() -> None:
    device, dtype = select_device_and_dtype("cpu")
    assert device == torch.device("cpu")
    assert dtype == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)


def test_explicit_and_bad_device_and_dtype() -> None:
    assert select_device_and_dtype("cpu", "fp32") == (torch.device("cpu"), torch.float32)
    assert select_device_and_dtype("cpu", torch.float16)[1] == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        select_device_and_dtype("cpu", "float8")
    with pytest.raises(ValueError, match="unknown device"):
        select_device_and_dtype("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device_and_dtype("cuda")


# ----------------------------------------------------------------------------- batching machinery


def test_size_sorted_batches_group_similar_sizes() -> None:
    sizes = [(64, 64), (32, 32), (64, 64), (32, 32), (32, 48)]
    batches = size_sorted_batches(sizes, 2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))


def test_prefetch_prepares_the_next_batch_while_the_current_one_runs() -> None:
    # The consumer holds each item until the next one's preparation has started: with no background
    # preparation it would wait forever (here: until the generous timeout, then fail), whatever the load.
    started = {item: threading.Event() for item in range(3)}

    def prepare(item: int) -> int:
        started[item].set()
        return item * 10

    seen = []
    for item, prepared in prefetched([0, 1, 2], prepare):
        if item + 1 in started:
            assert started[item + 1].wait(timeout=60), f"item {item + 1} was not prepared while {item} ran"
        seen.append((item, prepared))
    assert seen == [(0, 0), (1, 10), (2, 20)]


def test_prefetch_raises_the_preparation_error() -> None:
    def prepare(item: int) -> int:
        if item == 1:
            raise ValueError("bad item 1")
        return item

    with pytest.raises(ValueError, match="bad item 1"):
        list(prefetched([0, 1, 2], prepare))


# ----------------------------------------------------------------------------- VQA


def test_vqa_top_k_in_order(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    vqa = make("visual-question-answering", dirs["vqa"])
    answers = vqa(images[0], "what color is the shape?", top_k=3)
    assert len(answers) == 3
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert {a["answer"] for a in answers} <= set(vqa.config.id2label.values())
    assert len(vqa(images[0], "what?", top_k=100)) == vqa.config.num_labels


def test_vqa_scores_are_sigmoid_of_the_logits(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    vqa = make("vqa", dirs["vqa"])
    inputs = vqa.processor(images=images[1], text="is there a circle?", return_tensors="pt")
    with torch.no_grad():
        probs = vqa.model(**inputs).logits[0].sigmoid()
    best = int(probs.argmax())
    top = vqa(images[1], "is there a circle?", top_k=1)[0]
    assert top["answer"] == vqa.config.id2label[best]
    assert top["score"] == pytest.approx(float(probs[best]), abs=1e-6)


def test_vqa_batch_with_mixed_sizes_equals_one_by_one(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    vqa = make("vqa", dirs["vqa"])
    items = [
        {"image": image, "question": q} for image in images for q in ("what color?", "is it a red circle?")
    ]
    batched = vqa(items, top_k=5, batch_size=4)
    assert_close(batched, [vqa(item["image"], item["question"], top_k=5) for item in items])


def test_vqa_call_forms_and_image_types_agree(
    dirs: dict[str, str], images: list[np.ndarray], tmp_path: pytest.TempPathFactory
) -> None:
    vqa = make("vqa", dirs["vqa"])
    path = tmp_path / "image.png"
    Image.fromarray(images[2]).save(path)
    expected = vqa(images[2], "what shape?", top_k=2)
    for image in (str(path), path, png_bytes(images[2]), Image.open(path), torch.from_numpy(images[2])):
        assert_close(vqa(image=image, question="what shape?", top_k=2), expected)
    assert_close(vqa([images[2], images[2]], "what shape?", top_k=2), [expected, expected])
    assert_close(vqa([images[2]], ["what shape?"], top_k=2), [expected])


# ----------------------------------------------------------------------------- building pipelines


def test_task_without_its_head_is_refused(dirs: dict[str, str]) -> None:
    with pytest.raises(
        ValueError, match="nlvr2 task needs a ViltForImagesAndTextClassification.*ViltForMaskedLM"
    ):
        make("nlvr2", dirs["mlm"])
    with pytest.raises(ValueError, match="fill-mask task needs a ViltForMaskedLM.*ViltForQuestionAnswering"):
        vilt.pipeline("fill-mask", model=ViltForQuestionAnswering.from_pretrained(dirs["vqa"]))


def test_tasks_other_than_vqa_need_a_model() -> None:
    with pytest.raises(ValueError, match="fill-mask task needs a model"):
        vilt.pipeline("fill-mask")


def test_unknown_task_model_and_backend(dirs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        vilt.pipeline("captioning", model=dirs["vqa"])
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hugging Face hub id"):
        vilt.pipeline("vqa", model="/no/such/model")
    with pytest.raises(ValueError, match="unknown backend"):
        vilt.pipeline("vqa", model=dirs["vqa"], backend="tensorflow")
    with pytest.raises(TypeError, match="model must be"):
        vilt.pipeline("vqa", model=3)


def test_model_instance_stays_as_given_unless_asked(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    model = ViltForQuestionAnswering.from_pretrained(dirs["vqa"])
    vqa = vilt.pipeline("vqa", model=model, processor=vilt.ViltProcessor.from_pretrained(dirs["vqa"]))
    assert vqa.dtype == torch.float32 and model.dtype == torch.float32
    assert_close(vqa(images[0], "what?", top_k=2), make("vqa", dirs["vqa"])(images[0], "what?", top_k=2))
    vilt.pipeline("vqa", model=model, dtype="bfloat16", processor=vqa.processor)
    assert model.dtype == torch.bfloat16


def test_auto_dtype_pipeline_answers_like_float32(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    auto = vilt.pipeline("vqa", model=dirs["vqa"])
    assert auto.dtype == select_device_and_dtype()[1]
    fp32 = make("vqa", dirs["vqa"])
    got = auto(images[1], "what color?", top_k=5)
    want = fp32(images[1], "what color?", top_k=5)
    np.testing.assert_allclose(sorted(a["score"] for a in got), sorted(a["score"] for a in want), atol=2e-2)


# ----------------------------------------------------------------------------- NLVR2


def test_nlvr2_label_and_score(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    nlvr2 = make("nlvr2", dirs["nlvr2"])
    result = nlvr2((images[0], images[1]), "there are two dogs")
    assert set(result) == {"label", "score"} and isinstance(result["label"], bool)
    inputs = nlvr2.processor(
        images=[[images[0], images[1]]], text=["there are two dogs"], return_tensors="pt"
    )
    with torch.no_grad():
        probs = nlvr2.model(**inputs).logits[0].softmax(-1)
    assert result["label"] == bool(probs.argmax())
    assert result["score"] == pytest.approx(float(probs.max()), abs=1e-6)


def test_nlvr2_batch_with_mixed_sizes_equals_one_by_one(
    dirs: dict[str, str], images: list[np.ndarray]
) -> None:
    nlvr2 = make("nlvr2", dirs["nlvr2"])
    pairs = [(images[0], images[1]), (images[2], images[0]), (images[1], images[1])]
    texts = ["left has more", "both are red", "same picture"]
    batched = nlvr2(pairs, texts, batch_size=3)
    assert_close(batched, [nlvr2(p, t) for p, t in zip(pairs, texts)])
    assert_close(nlvr2([{"images": p, "text": t} for p, t in zip(pairs, texts)]), batched)
    with pytest.raises(ValueError, match="2 image"):
        nlvr2((images[0],), "one image only")
    with pytest.raises(ValueError, match="statement is empty"):
        nlvr2((images[0], images[1]), "")


# ----------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("head", ["retrieval", "itm"])
def test_rank_matrix_matches_pairwise_forward(
    dirs: dict[str, str], images: list[np.ndarray], head: str
) -> None:
    rank = make("image-text-retrieval", dirs[head])
    texts = ["a red circle", "two blue squares on a table", "yes"]
    scores = rank(images=images, texts=texts, batch_size=4)
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    for i, image in enumerate(images):
        for j, text in enumerate(texts):
            inputs = rank.processor(images=image, text=text, return_tensors="pt")
            with torch.no_grad():
                expected = rank.model(**inputs).logits[0, -1]  # rank_output, or the ITM "match" logit
            assert scores[i, j] == pytest.approx(float(expected), abs=1e-5)
    np.testing.assert_allclose(rank(images=images, texts=texts, batch_size=1), scores, atol=1e-5)


def test_rank_sorts_both_ways(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    rank = make("retrieval", dirs["retrieval"])
    texts = ["a", "b c", "d e f", "g"]
    ranked = rank.rank(images, texts, top_k=2)
    scores = ranked["scores"]
    assert len(ranked["text_to_images"]) == 4 and len(ranked["image_to_texts"]) == 3
    for j, hits in enumerate(ranked["text_to_images"]):
        assert [h["index"] for h in hits] == list(np.argsort(-scores[:, j], kind="stable")[:2])
    for i, hits in enumerate(ranked["image_to_texts"]):
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert hits[0]["text"] == texts[int(np.argmax(scores[i]))]
    with pytest.raises(ValueError, match="non-empty list"):
        rank(images=[], texts=texts)


def test_top_k_per_row() -> None:
    hits = top_k_per_row(np.array([[0.1, 0.9, 0.5], [3.0, 2.0, 1.0]]), 2)
    assert [[h["index"] for h in row] for row in hits] == [[1, 2], [0, 1]]


# ----------------------------------------------------------------------------- fill-mask


def test_fill_mask_fills_the_most_confident_mask_first(
    dirs: dict[str, str], images: list[np.ndarray]
) -> None:
    fill = make("fill-mask", dirs["mlm"])
    text = "a [MASK] circle next to a [MASK]"
    result = fill(images[0], text)
    assert "[MASK]" not in result["sequence"] and len(result["tokens"]) == len(result["scores"]) == 2
    tokenizer = fill.processor.tokenizer
    inputs = fill.processor(images=images[0], text=text, return_tensors="pt")
    masks = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    with torch.no_grad():
        probs = fill.model(**inputs).logits[0].softmax(-1)  # (Lt, vocab)
    best, ids = probs[masks].max(-1)
    first = int(best.argmax())  # the mask filled first keeps its first-pass prediction
    assert result["tokens"][first] == tokenizer.convert_ids_to_tokens(int(ids[first]))
    assert result["scores"][first] == pytest.approx(float(best[first]), abs=1e-5)


def test_fill_mask_batch_equals_one_by_one(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    fill = make("fill-mask", dirs["mlm"])
    texts = ["a [MASK] circle", "[MASK] [MASK] dog on a [MASK]", "is it [MASK]?"]
    batched = fill(images, texts, batch_size=3)
    assert_close(batched, [fill(image, text) for image, text in zip(images, texts)])
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        fill(images[0], "nothing to fill")


# ----------------------------------------------------------------------------- token classification


def test_token_classification(dirs: dict[str, str], images: list[np.ndarray]) -> None:
    tag = make("token-classification", dirs["tokens"])
    tokens = tag(images[0], "a red circle")
    assert [t["token"] for t in tokens] == ["a", "red", "circle"]
    assert [t["index"] for t in tokens] == [1, 2, 3]
    assert all(t["label"] in {"O", "COLOR", "SHAPE"} and 0 < t["score"] <= 1 for t in tokens)
    batched = tag(images, ["a red circle", "two", "a blue square on the left"], batch_size=3)
    assert_close(batched[0], tokens)
    assert_close(batched[2], tag(images[2], "a blue square on the left"))


# ----------------------------------------------------------------------------- the bundled model

needs_bundled = pytest.mark.skipif(
    not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet"
)


@needs_bundled
def test_bundled_model_answers_easy_vqa() -> None:
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    items = [{"image": paths[image_ids[i]], "question": questions[i]} for i in range(0, 600, 10)]
    vqa = vilt.pipeline("vqa", dtype="float32")
    batched = vqa(items, top_k=3, batch_size=16)
    correct = sum(r[0]["answer"] == answers[i] for r, i in zip(batched, range(0, 600, 10)))
    # a wrong label order or preprocessing drops this to chance (about 1/3 on these questions); the
    # model's own test accuracy is in results/easy-vqa/test_metrics.json
    assert correct >= 0.8 * len(items)
    assert_close(
        batched[:8], [vqa(item["image"], item["question"], top_k=3) for item in items[:8]], atol=1e-4
    )


@needs_bundled
def test_bundled_model_is_refused_for_other_tasks() -> None:
    with pytest.raises(ValueError, match="nlvr2 task needs .* is a ViltForQuestionAnswering"):
        vilt.pipeline("nlvr2", model=str(BUNDLED))


# ----------------------------------------------------------------------------- the onnxruntime backend


@pytest.mark.slow
def test_onnxruntime_backend_answers_like_torch(
    dirs: dict[str, str], images: list[np.ndarray], tmp_path: pytest.TempPathFactory
) -> None:
    pytest.importorskip("onnxruntime")
    from vilt.cli import main

    exported = str(tmp_path / "onnx")
    assert main(["export", "--model", dirs["vqa"], "--output", exported]) == 0
    onnx = vilt.pipeline("vqa", model=exported, backend="onnxruntime")
    assert_close(
        onnx(images, "what color?", top_k=3), make("vqa", dirs["vqa"])(images, "what color?", top_k=3)
    )
