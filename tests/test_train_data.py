"""Dataset readers on small files in each real format, and bad data: skipped and counted, or --strict."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from train_toy import write_image

from vilt.image_processing import ViltImageProcessor
from vilt.processing import ViltProcessor
from vilt.train import data as D


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_read_vqav2_soft_scores_and_images(tmp_path):
    (tmp_path / "val2014").mkdir()
    questions = _write_json(
        tmp_path / "q.json",
        {
            "data_subtype": "val2014",
            "questions": [{"question_id": 7, "image_id": 42, "question": "How many dogs?"}],
        },
    )
    answers = ["2"] * 3 + ["two"] * 1 + ["3"] * 2 + ["many"] * 4  # "two" normalises to "2"
    annotations = _write_json(
        tmp_path / "a.json",
        {
            "annotations": [
                {"question_id": 7, "multiple_choice_answer": "2", "answers": [{"answer": a} for a in answers]}
            ]
        },
    )
    [ex] = D.read_vqav2(questions, annotations, tmp_path)
    assert ex.images == (str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"),)
    assert ex.answer_scores == pytest.approx({"2": 1.0, "3": 0.6, "many": 1.0})
    assert len(ex.answers) == 10 and ex.text == "How many dogs?"
    [test_ex] = D.read_vqav2(questions, None, tmp_path)  # test questions: no targets
    assert test_ex.answer_scores == {}


def test_vqav2_answer_vocab_counts_normalised_answers(tmp_path):
    rows = [{"multiple_choice_answer": a} for a in ["yes"] * 9 + ["Two"] * 5 + ["2"] * 4 + ["cat"] * 8]
    path = _write_json(tmp_path / "a.json", {"annotations": rows})
    assert D.vqav2_answer_vocab([path]) == ["yes", "2"]  # first-occurrence order, count >= 9


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("v.json", ["yes", "no"], ["yes", "no"]),
        ("v.json", {"0": "yes", "1": "no"}, ["yes", "no"]),
        ("v.json", {"no": 1, "yes": 0}, ["yes", "no"]),
        ("v.txt", "yes\nno\n", ["yes", "no"]),
    ],
)
def test_load_answer_vocab_formats(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert D.load_answer_vocab(path) == expected


def test_read_nlvr2(tmp_path):
    lines = [
        {"identifier": "train-10171-0-0", "sentence": "One dog.", "label": "True", "directory": 3},
        {"identifier": "train-10171-0-1", "sentence": "Two dogs.", "label": "False", "directory": 3},
    ]
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "3").mkdir()
    first, second = D.read_nlvr2(path, tmp_path)
    assert first.images == (
        str(tmp_path / "3" / "train-10171-0-img0.png"),
        str(tmp_path / "3" / "train-10171-0-img1.png"),
    )
    assert (first.label, second.label) == (1, 0) and first.group == second.group


def test_read_karpathy_splits(tmp_path):
    images = [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog."}, {"raw": "A dog."}, {"raw": "A pet."}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A cat."}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "sentences": [{"raw": "A cow."}]},
    ]  # fmt: skip
    path = _write_json(tmp_path / "dataset_coco.json", {"images": images})
    (tmp_path / "train2014").mkdir()
    train = D.read_karpathy(path, "train", tmp_path)
    assert [ex.text for ex in train] == ["A dog.", "A pet.", "A cat."]  # restval joins train; duplicates go
    assert train[0].images == (str(tmp_path / "train2014" / "a.jpg"),)
    assert [ex.group for ex in D.read_karpathy(path, "test", tmp_path)] == ["c.jpg"]


def test_read_jsonl_answers_labels_and_pairs(tmp_path):
    lines = [
        {"image": "x.png", "text": "what?", "answers": ["cat", "cat", "dog"]},
        {"image": "x.png", "text": "what?", "answer": "Cat"},
        {"images": ["l.png", "r.png"], "text": "left has more", "label": 1},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    many, one, pair = D.read_jsonl(path)
    assert many.answer_scores == pytest.approx({"cat": 0.6, "dog": 0.3}) and many.answers == (
        "cat",
        "cat",
        "dog",
    )
    assert one.answer_scores == {"cat": 1.0}
    assert pair.images == (str(tmp_path / "l.png"), str(tmp_path / "r.png")) and pair.label == 1


def test_read_jsonl_reports_the_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"image": "x.png", "text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2"):
        D.read_jsonl(path)


def test_easy_vqa_reader_and_captions():
    train = D.read_easy_vqa("train")
    assert len(train) == 38575 and len(D.read_easy_vqa("test")) == 9673
    captions = D.easy_vqa_captions(train)
    assert len(captions) > 3000 and len({c.images[0] for c in captions}) == len(captions)
    colour, shape = captions[0].text.split()[1:]
    assert shape in {"circle", "rectangle", "triangle"} and colour in D.easy_vqa_answers()
    fit, held = D.split_holdout(train, 0.1, seed=0)
    assert not {ex.group for ex in fit} & {ex.group for ex in held} and len(fit) + len(held) == len(train)


# ----------------------------------------------------------------------------- bad data


def _bad_examples(root: Path) -> list[D.Example]:
    good = write_image(root / "good.png", "red")
    garbage = root / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    return [
        D.Example((good,), "what color?", {"red": 1.0}),
        D.Example((str(root / "missing.png"),), "what color?", {"red": 1.0}),
        D.Example((str(garbage),), "what color?", {"red": 1.0}),
        D.Example((good,), "what color?", {"purple": 1.0}),  # not in the vocabulary
        D.Example((good,), "   ", {"red": 1.0}),  # empty question
    ]


def _dataset(examples: list[D.Example], strict: bool) -> tuple[D.ViltDataset, D.DataIssues]:
    issues = D.DataIssues(strict)
    loader = D.ImageLoader(ViltImageProcessor(size=32, size_divisor=8))
    return D.ViltDataset(examples, "vqa", loader, issues, answers=["red", "green"]), issues


def test_bad_data_is_skipped_and_counted(tmp_path):
    dataset, issues = _dataset(_bad_examples(tmp_path), strict=False)
    assert len(dataset) == 3  # the unknown answer and the empty question are dropped up front
    assert issues.counts == {"answer not in vocabulary": 1, "empty text": 1}
    collator = D.Collator(ViltProcessor().tokenizer, "vqa")
    batch = collator([dataset[i] for i in range(len(dataset))])
    assert batch["skipped"] == {"unreadable image": 2}  # the missing and the garbage image
    assert batch["pixel_values"].shape == (1, 3, 32, 32) and batch["labels"].tolist() == [[1.0, 0.0]]


def test_a_batch_of_only_bad_images_yields_no_inputs(tmp_path):
    dataset, _ = _dataset(_bad_examples(tmp_path)[1:3], strict=False)
    batch = D.Collator(ViltProcessor().tokenizer, "vqa")([dataset[0], dataset[1]])
    assert "input_ids" not in batch and sum(batch["skipped"].values()) == 2


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (1, "unreadable image: image .*missing.png does not exist"),
        (3, "answer not in vocabulary"),
        (4, "empty text"),
    ],
)
def test_strict_raises_a_clear_error(tmp_path, index, message):
    examples = _bad_examples(tmp_path)
    with pytest.raises(D.DataError, match=message):
        dataset, _ = _dataset([examples[0], examples[index]], strict=True)
        dataset[1]


def test_collator_layouts_for_each_task(tmp_path):
    tokenizer = ViltProcessor().tokenizer
    loader = D.ImageLoader(ViltImageProcessor(size=32, size_divisor=8), cache=True)
    paths = [write_image(tmp_path / f"{i}.png", c) for i, c in enumerate(["red", "green", "blue"])]
    pairs = [
        D.Example((paths[i], paths[(i + 1) % 3]), f"statement {i}", label=i % 2, group=str(i))
        for i in range(3)
    ]
    nlvr2 = D.ViltDataset(pairs, "nlvr2", loader, D.DataIssues())
    batch = D.Collator(tokenizer, "nlvr2")([nlvr2[0], nlvr2[1]])
    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32) and batch["labels"].tolist() == [0, 1]
    captions = [D.Example((p,), f"caption {i}", group=p) for i, p in enumerate(paths)]
    retrieval = D.ViltDataset(captions, "retrieval", loader, D.DataIssues(), negatives=2)
    batch = D.Collator(tokenizer, "retrieval")([retrieval[0], retrieval[1]])
    assert batch["input_ids"].shape[0] == 6 and batch["pixel_values"].shape == (6, 3, 32, 32)
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][2]) and batch["labels"].tolist() == [
        0,
        0,
    ]
    pretrain = D.ViltDataset(captions, "pretrain", loader, D.DataIssues())
    batch = D.Collator(tokenizer, "pretrain")([pretrain[0]])
    assert not torch.equal(batch["pixel_values"], batch["false_pixel_values"])  # another image


def test_randaugment_is_reproducible_and_keeps_the_background(tmp_path):
    from PIL import Image

    from vilt.train.randaugment import OPERATIONS, RandAugment

    image = Image.new("RGB", (32, 32), (250, 240, 240))
    image.paste((0, 0, 255), (8, 8, 24, 24))
    geometric = RandAugment(m=9, operations=["Rotate", "TranslateXabs", "TranslateYabs", "ShearX"])
    first, again = geometric(image, random.Random(3)), geometric(image, random.Random(3))
    assert first.tobytes() == again.tobytes()
    assert (0, 0, 0) not in {c for _, c in first.getcolors(32 * 32)}  # uncovered areas take the border colour
    every = RandAugment()
    assert every.operations == list(OPERATIONS) and len(OPERATIONS) == 14
    with pytest.raises(ValueError, match="unknown RandAugment operations"):
        RandAugment(operations=["Invert"])


def test_randaugment_solarizes_at_the_original_threshold():
    from PIL import Image

    from vilt.train.randaugment import RandAugment

    image = Image.new("RGB", (2, 1))
    image.putdata([(76, 76, 76), (77, 77, 77)])
    solarized = RandAugment(n=1, m=9, operations=["Solarize"])(image, random.Random(0))  # threshold 76.8
    assert [solarized.getpixel((x, 0)) for x in (0, 1)] == [(76, 76, 76), (178, 178, 178)]  # 77 inverted


def test_augmented_images_are_redrawn_each_epoch(tmp_path):
    from vilt.train.randaugment import RandAugment

    path = write_image(tmp_path / "a.png", "red")
    loader = D.ImageLoader(ViltImageProcessor(size=32, size_divisor=8), cache=True, augment=RandAugment())
    dataset = D.ViltDataset(
        [D.Example((path,), "a red square", group="a")], "pretrain", loader, D.DataIssues()
    )
    dataset.examples.append(D.Example((write_image(tmp_path / "b.png", "blue"),), "a blue square", group="b"))
    first = dataset[0].images[0]
    assert torch.equal(first, dataset[0].images[0])  # the same epoch and index: the same augmentation
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0].images[0])
