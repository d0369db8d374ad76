"""The VQA metric against hand-computed cases of the official definition; accuracy; recall@K."""

from __future__ import annotations

import pytest
import torch

from vilt.train.data import normalize_answer, soft_score
from vilt.train.metrics import accuracy, recall_at_k, vqa_accuracy


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("yes", ["yes"] * 10, 1.0),  # every subset of 9 has 9 matches: min(1, 9/3) = 1
        ("no", ["yes"] * 10, 0.0),
        # 2 annotators said "2": each of them sees 1 other match (1/3), the other 8 see 2 (2/3)
        ("2", ["2"] * 2 + ["3"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        ("two", ["2"] * 2 + ["3"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # the prediction is normalised
        # 3 said "red": they see 2 matches (2/3); the 7 others see 3 (1)
        ("red", ["red"] * 3 + ["blue"] * 7, (3 * (2 / 3) + 7 * 1) / 10),
        ("cat", ["cat"] + ["dog"] * 9, 9 * (1 / 3) / 10),
        # the annotators disagree, so their answers are normalised too ("A dog." -> "dog")
        ("dog", ["A dog."] * 4 + ["cat"] * 6, 1.0 * 6 / 10 + 4 * 1.0 / 10),
    ],
)
def test_vqa_accuracy_matches_hand_computed_cases(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_accuracy_does_not_normalise_unanimous_answers():
    # the official script normalises the annotators' answers only when they disagree
    assert vqa_accuracy("dog", ["A dog."] * 10) == 0.0


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError, match="annotators"):
        vqa_accuracy("yes", [])


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),
        ("the cat", "cat"),
        ("dont", "don't"),
        ("yes!", "yes"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("couldntve", "couldn't've"),
        ("  Ten\tapples ", "10 apples"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_soft_scores_equal_the_vqa_accuracy_of_count_matches():
    for count, score in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        assert soft_score(count) == pytest.approx(score)
        if count:  # the soft score is the official accuracy of an answer that `count` annotators gave
            answers = ["x"] * count + ["y"] * (10 - count)
            assert vqa_accuracy("x", answers) == pytest.approx(score, abs=0.005)


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    with pytest.raises(ValueError):
        accuracy(torch.tensor([1]), torch.tensor([1, 2]))


def test_recall_at_k_by_hand():
    # 3 images, 4 texts; text j belongs to image text_image[j]
    text_image = torch.tensor([0, 0, 1, 2])
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.0],  # image 0: best text 0 (its own) -> tr hit at 1
            [0.8, 0.2, 0.3, 0.1],  # image 1: best text 0 (not its own); its text 2 is 2nd
            [0.1, 0.2, 0.3, 0.0],  # image 2: its text 3 is last (4th)
        ]
    )
    out = recall_at_k(scores, text_image, ks=(1, 2))
    assert out["tr_r1"] == pytest.approx(1 / 3)
    assert out["tr_r2"] == pytest.approx(2 / 3)
    # text columns: text 0 -> best image 0 (hit); text 1 -> best image 2 (miss), 2nd image 1 (miss);
    # text 2 -> best image 0 (miss), 2nd image 1 (hit); text 3 -> best image 1 (miss), 2nd image 0 (miss)
    assert out["ir_r1"] == pytest.approx(1 / 4)
    assert out["ir_r2"] == pytest.approx(2 / 4)


def test_retrieval_scores_embed_each_image_once_and_match_full_passes():
    from tiny import WIDE_INIT, tiny_config

    from vilt.heads import ViltForImageAndTextRetrieval
    from vilt.processing import ViltProcessor
    from vilt.train.metrics import retrieval_scores

    torch.manual_seed(0)
    model = ViltForImageAndTextRetrieval(tiny_config(initializer_range=WIDE_INIT)).eval()
    pixels = [torch.randn(3, 32, 32) for _ in range(3)]
    texts = ["a red square", "a dog", "two blue cats on a sofa", "nothing"]
    text = dict(ViltProcessor().tokenizer(texts, padding="longest", return_tensors="pt"))
    scores = retrieval_scores(model, pixels, text, batch_size=3, progress=False)  # (3, 4)
    assert scores.shape == (3, 4)
    with torch.no_grad():
        for i, pv in enumerate(pixels):
            direct = model(**text, pixel_values=pv[None].expand(4, -1, -1, -1)).logits[:, 0]
            torch.testing.assert_close(scores[i], direct, rtol=1e-4, atol=1e-5)
