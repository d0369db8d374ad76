"""Dataset readers and batching for training and evaluating ViLT.

Every reader turns one on-disk format into a list of :class:`Example`:

| reader | format |
|---|---|
| :func:`read_vqav2` | VQAv2 questions JSON (+ annotations JSON) and COCO image folders |
| :func:`read_nlvr2` | NLVR2 jsonl and the image folders (two images per statement) |
| :func:`read_karpathy` | COCO / Flickr30k captions in the Karpathy-split JSON |
| :func:`read_jsonl` | generic jsonl: ``{"image": path, "text": ..., "answers"/"answer"/"label": ...}`` |
| :func:`read_easy_vqa` | easy-VQA from the ``easy_vqa`` PyPI package |

:class:`ViltDataset` turns examples into model-ready items (images through the processor, cached when
asked; answers through the answer vocabulary) and :class:`Collator` pads them into batches. Bad data
never crashes an epoch: missing or unreadable images, answers outside the vocabulary and empty texts are
skipped and counted (:class:`DataIssues`); with ``strict=True`` they raise :class:`DataError` instead.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .examples import Example, Item, Skipped
from .metrics import normalize_answer
from .tasks import TrainingTask, training_task

# ----------------------------------------------------------------------------- examples and issues


class DataError(ValueError):
    """Bad data met with ``strict=True``."""


class DataIssues:
    """Counts skipped examples by reason; raises :class:`DataError` instead when ``strict``."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str, detail: str) -> None:
        """Record one skipped example (or raise when strict).

        Args:
            reason: short category, e.g. "unreadable image".
            detail: what exactly was wrong, for the error message.
        """
        if self.strict:
            raise DataError(f"{reason}: {detail} (drop --strict to skip such examples and count them)")
        self.counts[reason] += 1

    def update(self, counts: Counter[str] | dict[str, int]) -> None:
        self.counts.update(counts)

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items())) or "none"


# ----------------------------------------------------------------------------- VQA answers


def soft_score(count: int) -> float:
    """VQA soft target of an answer given by ``count`` of the 10 annotators: 0.3, 0.6, 0.9, then 1.0."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


def build_answer_vocab(answers: Sequence[str], min_count: int = 9) -> list[str]:
    """The answers seen at least ``min_count`` times, in first-occurrence order (VQAv2: 3,129 answers).

    Args:
        answers: one (normalised) ``multiple_choice_answer`` per question, over train + val.
        min_count: the original recipe's threshold.
    """
    counts = Counter(answers)
    return [a for a in counts if counts[a] >= min_count]


def load_answer_vocab(path: str | os.PathLike[str]) -> list[str]:
    """Read a user's answer vocabulary: a JSON list, a JSON ``{"id": "answer"}`` id2label map, a JSON
    ``{"answer": id}`` label2id map, or a text file with one answer per line.

    Args:
        path: the vocabulary file.
    """
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, list):
        return [str(a) for a in data]
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        return [str(data[k]) for k in sorted(data, key=int)]
    if isinstance(data, dict):
        return [a for a, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
    raise ValueError(f"{path}: an answer vocabulary must be a JSON list or dict, or one answer per line")


# ----------------------------------------------------------------------------- readers


def _read_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def _read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not valid JSON ({err})") from err
    return rows


def read_vqav2(
    questions_file: str | os.PathLike[str],
    annotations_file: str | os.PathLike[str] | None,
    image_root: str | os.PathLike[str],
) -> list[Example]:
    """VQAv2 (the official ``v2_OpenEnded_mscoco_*_questions.json`` and ``v2_mscoco_*_annotations.json``).

    Images are looked up as ``image_root/<subtype>/COCO_<subtype>_<id:012d>.jpg`` or directly under
    ``image_root``, where subtype is the questions file's ``data_subtype`` (e.g. "train2014").

    Args:
        questions_file: the questions JSON.
        annotations_file: the annotations JSON; None for test questions (no targets).
        image_root: the COCO image folder.
    """
    questions = _read_json(questions_file)
    subtype = questions.get("data_subtype", "")
    annotations = {}
    if annotations_file is not None:
        annotations = {a["question_id"]: a for a in _read_json(annotations_file)["annotations"]}
    examples = []
    for q in questions["questions"]:
        image = _find_image(Path(image_root), f"COCO_{subtype}_{int(q['image_id']):012d}.jpg", subtype)
        raw = [a["answer"] for a in annotations[q["question_id"]]["answers"]] if annotations else []
        counts = Counter(normalize_answer(a) for a in raw)
        examples.append(
            Example(
                images=(image,),
                text=q["question"],
                answer_scores={a: soft_score(n) for a, n in counts.items()},
                answers=tuple(raw),
                group=str(q["image_id"]),
            )
        )
    return examples


def vqav2_answer_vocab(annotations_files: Sequence[str | os.PathLike[str]], min_count: int = 9) -> list[str]:
    """The original recipe's answer vocabulary: normalised ``multiple_choice_answer`` seen >= 9 times.

    Args:
        annotations_files: train and val annotations JSON (VQAv2 train + val gives 3,129 answers).
        min_count: the threshold.
    """
    answers = [
        normalize_answer(a["multiple_choice_answer"])
        for path in annotations_files
        for a in _read_json(path)["annotations"]
    ]
    return build_answer_vocab(answers, min_count)


def _find_image(image_root: Path, name: str, subfolder: str = "") -> str:
    """``image_root/subfolder/name`` when that folder exists, else ``image_root/name``."""
    return str(
        image_root / subfolder / name
        if subfolder and (image_root / subfolder).is_dir()
        else image_root / name
    )


def read_nlvr2(jsonl_file: str | os.PathLike[str], image_root: str | os.PathLike[str]) -> list[Example]:
    """NLVR2 statements (``train.json``/``dev.json``/``test1.json``, one JSON object per line).

    Each line's images are ``<identifier minus the sentence index>-img0.png`` and ``-img1.png``, under
    ``image_root/<directory>/`` (train) or ``image_root`` (dev, test1).

    Args:
        jsonl_file: the statements file.
        image_root: the folder of that split's images.
    """
    root = Path(image_root)
    examples = []
    for row in _read_jsonl(jsonl_file):
        pair = row["identifier"].rsplit("-", 1)[0]
        folder = str(row.get("directory", ""))
        images = tuple(_find_image(root, f"{pair}-img{i}.png", folder) for i in (0, 1))
        label = str(row.get("label", "")).lower()
        examples.append(
            Example(
                images=images,
                text=row["sentence"],
                label={"true": 1, "false": 0}.get(label),
                group=pair,
            )
        )
    return examples


def read_karpathy(
    json_file: str | os.PathLike[str], split: str, image_root: str | os.PathLike[str]
) -> list[Example]:
    """COCO or Flickr30k captions in the Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``).

    Args:
        json_file: the Karpathy JSON.
        split: "train" (includes "restval", as the original recipe), "val" or "test".
        image_root: the image folder (COCO: images are under ``image_root/<filepath>/``).
    """
    wanted = {"train", "restval"} if split == "train" else {split}
    root = Path(image_root)
    examples = []
    for image in _read_json(json_file)["images"]:
        if image["split"] not in wanted:
            continue
        path = _find_image(root, image["filename"], image.get("filepath", ""))
        for caption in dict.fromkeys(s["raw"].strip() for s in image["sentences"]):
            examples.append(Example(images=(path,), text=caption, group=image["filename"]))
    return examples


def read_jsonl(
    jsonl_file: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None
) -> list[Example]:
    """A generic jsonl for custom data, one example per line::

        {"image": "img/1.jpg", "text": "what is this?", "answers": ["cat", "cat", "dog"]}
        {"image": "img/1.jpg", "text": "what is this?", "answer": "cat"}
        {"images": ["a.jpg", "b.jpg"], "text": "the left image has two dogs", "label": 1}
        {"image": "img/2.jpg", "text": "a dog on a sofa"}

    Relative image paths are resolved against ``image_root`` (default: the jsonl's folder). A list of
    answers gets VQA soft scores by count; one answer gets score 1.

    Args:
        jsonl_file: the file.
        image_root: the base folder of relative image paths.
    """
    root = Path(image_root) if image_root is not None else Path(jsonl_file).parent
    examples = []
    for row in _read_jsonl(jsonl_file):
        images = row.get("images") or [row.get("image", "")]
        answers = row.get("answers") or ([row["answer"]] if "answer" in row else [])
        counts = Counter(normalize_answer(str(a)) for a in answers)
        scores = {a: (soft_score(n) if len(answers) > 1 else 1.0) for a, n in counts.items()}
        examples.append(
            Example(
                images=tuple(str(root / p) for p in images),
                text=str(row.get("text", "")),
                answer_scores=scores,
                answers=tuple(str(a) for a in answers) if len(answers) > 1 else (),
                label=None if row.get("label") is None else int(row["label"]),
                group=str(images[0]),
            )
        )
    return examples


def read_easy_vqa(split: str) -> list[Example]:
    """easy-VQA (the ``easy_vqa`` package): 64x64 shapes, 13 answers, 38,575 train / 9,673 test questions.

    Args:
        split: "train" or "test".
    """
    try:
        import easy_vqa
    except ImportError as err:
        raise ImportError("easy-VQA needs the easy-vqa package: pip install 'vilt[train]'") from err
    if split not in ("train", "test"):
        raise ValueError(f"easy-VQA has the splits 'train' and 'test', got {split!r}")
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    return [
        Example(images=(paths[i],), text=q, answer_scores={a: 1.0}, group=f"{split}-{i}")
        for q, a, i in zip(questions, answers, image_ids)
    ]


def easy_vqa_answers() -> list[str]:
    """The 13 easy-VQA answers, in the package's order."""
    import easy_vqa

    return list(easy_vqa.get_answers())


def easy_vqa_captions(examples: Sequence[Example]) -> list[Example]:
    """Captions such as "a blue circle" for the easy-VQA images, read off their questions and answers.

    Each easy-VQA image holds one shape. A question names its colour or shape when the answer is that
    colour or shape ("what color is the triangle?" -> "blue"), or when the question mentions it and
    is answered affirmatively ("is there not a red shape?" -> "no" means red; "no" negates as "not"). Images whose colour
    and shape are both known get a caption.

    Args:
        examples: easy-VQA examples from :func:`read_easy_vqa`.
    """
    shapes = {"circle", "rectangle", "triangle"}
    colours = set(easy_vqa_answers()) - shapes - {"yes", "no"}
    found: dict[str, dict[str, str]] = {}
    for ex in examples:
        answer = next(iter(ex.answer_scores), "")
        words = set(ex.text.rstrip("?").split())
        named = set()
        if answer in shapes | colours:
            named = {answer} | (words & (shapes | colours))
        elif answer in ("yes", "no") and (answer == "yes") != bool(words & {"not", "no"}):
            named = words & (shapes | colours)
        parts = found.setdefault(ex.images[0], {})
        for word in named:
            parts["shape" if word in shapes else "colour"] = word
    return [
        Example(images=(image,), text=f"a {parts['colour']} {parts['shape']}", group=image)
        for image, parts in found.items()
        if len(parts) == 2
    ]


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split off a validation set by image (no image is in both parts), reproducibly.

    Args:
        examples: the training examples.
        fraction: share of images held out, in (0, 1).
        seed: the shuffle seed.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    groups = sorted({ex.group for ex in examples})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, round(fraction * len(groups)))])
    return [ex for ex in examples if ex.group not in held], [ex for ex in examples if ex.group in held]


# ----------------------------------------------------------------------------- images


class ImageLoader:
    """Loads images through the image processor, optionally with RandAugment and an in-memory cache.

    Args:
        image_processor: a :class:`vilt.image_processing.ViltImageProcessor`.
        cache: keep each image in memory once read: preprocessed without augmentation, decoded with it.
        augment: a function (PIL image, ``random.Random``) -> PIL image, e.g.
            :class:`vilt.train.randaugment.RandAugment`; None for no augmentation.
    """

    def __init__(
        self,
        image_processor: Any,
        cache: bool = False,
        augment: Callable[[Any, random.Random], Any] | None = None,
    ) -> None:
        self.image_processor = image_processor
        self.augment = augment
        self.cache: dict[str, Any] | None = {} if cache else None

    def _process(self, image: Any) -> torch.Tensor:
        return self.image_processor(image, do_pad=False, return_tensors="pt")["pixel_values"][0]  # (C, H, W)

    def load(self, path: str, rng: random.Random | None = None) -> torch.Tensor:
        """One image as a (C, H, W) float tensor, augmented when ``rng`` is given; raises OSError/ValueError
        when it cannot be read."""
        item = self.cache.get(path) if self.cache is not None else None
        if item is None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"image {path} does not exist")
            from PIL import Image

            with Image.open(path) as img:
                item = img.convert("RGB")
            if self.augment is None:
                item = self._process(item)
            if self.cache is not None:
                self.cache[path] = item
        if self.augment is None:
            return item
        return self._process(self.augment(item, rng) if rng is not None else item)

    def preload(self, paths: Sequence[str]) -> dict[str, str]:
        """Decode and preprocess every image once (with a progress bar).

        Returns:
            the images that could not be read: path -> error message.
        """
        failed: dict[str, str] = {}
        if self.cache is None:
            return failed
        for path in tqdm(sorted(set(paths) - set(self.cache)), desc="preprocessing images", leave=False):
            try:
                self.load(path)
            except (OSError, ValueError) as err:
                failed[path] = str(err)
        return failed


# ----------------------------------------------------------------------------- datasets


class ViltDataset(Dataset):
    """Examples -> items for one task; the task (:mod:`vilt.train.tasks`) says what an item reads and
    what its target is:

    * vqa: target = (num_labels,) soft scores over ``answers`` (the label vocabulary);
    * nlvr2: target = the class id, two images;
    * retrieval: the true caption then ``negatives`` random captions of other images, target 0;
    * pretrain: the image, its caption, and a random other image for ITM negatives.

    Examples with an empty text, or that the task cannot use (vqa: no in-vocabulary answer; nlvr2: no
    label), are dropped at construction and counted in ``issues``; so are those whose images failed to
    preload (:meth:`drop_unreadable`).
    Other images that cannot be read are reported by :meth:`__getitem__` as :class:`Skipped` (counted
    by the collator).

    Args:
        examples: from a reader.
        task: a trainable task, or its name (:data:`vilt.train.tasks.TRAINING_TASKS`).
        images: the :class:`ImageLoader`.
        issues: where skipped examples are counted.
        answers: the answer vocabulary (vqa).
        negatives: random negative captions per image, for tasks that rank captions (retrieval
            training; 0 for evaluation).
        seed: seed of the per-item randomness (negatives, augmentation), combined with the epoch.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        task: str | TrainingTask,
        images: ImageLoader,
        issues: DataIssues,
        answers: Sequence[str] | None = None,
        negatives: int = 0,
        seed: int = 0,
    ) -> None:
        self.task = training_task(task) if isinstance(task, str) else task
        self.images, self.issues, self.negatives, self.seed = images, issues, negatives, seed
        self.answer_ids = {a: i for i, a in enumerate(answers or [])}
        if self.task.needs_answers and not self.answer_ids:
            raise ValueError(f"the {self.task.name} task needs an answer vocabulary")
        self.examples = [ex for ex in examples if self._usable(ex)]
        if not self.examples:
            raise ValueError(f"no usable examples for task {self.task.name!r} (skipped: {issues.summary()})")
        self.epoch = 0

    def _usable(self, ex: Example) -> bool:
        if not ex.text.strip():
            self.issues.skip("empty text", f"example with images {list(ex.images)}")
            return False
        problem = self.task.unusable(ex, self.answer_ids)
        if problem is not None:
            self.issues.skip(*problem)
            return False
        return True

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the per-item randomness (negatives, augmentation) for ``epoch``."""
        self.epoch = epoch

    def image_paths(self) -> list[str]:
        return [p for ex in self.examples for p in ex.images]

    def drop_unreadable(self, failed: dict[str, str]) -> None:
        """Drop (and count) the examples with an image in ``failed`` (path -> error), e.g. from preloading."""
        kept = []
        for ex in self.examples:
            bad = next((p for p in ex.images if p in failed), None)
            if bad is None:
                kept.append(ex)
            else:
                self.issues.skip("unreadable image", f"{bad}: {failed[bad]}")
        self.examples = kept
        if not kept:
            raise ValueError(
                f"no readable examples for task {self.task.name!r} (skipped: {self.issues.summary()})"
            )

    def target(self, ex: Example) -> torch.Tensor | int | None:
        """The training target of ``ex`` for this task (vqa: soft scores over the answer vocabulary)."""
        return self.task.target(ex, self.answer_ids)

    def _other(self, rng: random.Random, ex: Example) -> Example:
        """A random example of another image (for negatives)."""
        for _ in range(100):
            other = self.examples[rng.randrange(len(self.examples))]
            if other.group != ex.group:
                return other
        raise ValueError("negatives need examples of at least two different images")

    def __getitem__(self, index: int) -> Item | Skipped:
        ex = self.examples[index]
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        texts, paths = self.task.item(ex, rng, lambda rng: self._other(rng, ex), self.negatives)
        try:
            images = [self.images.load(p, rng) for p in paths]
        except (OSError, ValueError) as err:
            if self.issues.strict:
                self.issues.skip("unreadable image", str(err))  # raises DataError
            return Skipped("unreadable image")
        return Item(images, texts, self.target(ex), index)


# ----------------------------------------------------------------------------- batching


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (C, H, W) images bottom-right to the largest size, as the processor does.

    Returns:
        pixel_values (N, C, H, W) and pixel_mask (N, H, W), 1 on real pixels.
    """
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    pixel_values = images[0].new_zeros(len(images), images[0].shape[0], height, width)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
    for i, im in enumerate(images):
        pixel_values[i, :, : im.shape[1], : im.shape[2]] = im
        pixel_mask[i, : im.shape[1], : im.shape[2]] = 1
    return pixel_values, pixel_mask


class Collator:
    """Items -> a batch dict of model inputs (unreadable items dropped and counted in ``skipped``).

    Batch layouts per task (each task's :meth:`~vilt.train.tasks.TrainingTask.collate`):

    * vqa: inputs + ``labels`` (B, num_labels);
    * nlvr2: ``pixel_values`` (B, 2, C, H, W), ``pixel_mask`` (B, 2, H, W), ``labels`` (B,);
    * retrieval: B groups of 1 + k pairs, laid out consecutively (B * (1 + k) rows), ``labels`` (B,) zeros;
    * pretrain: inputs + ``false_pixel_values``/``false_pixel_mask`` (B, C, H, W)/(B, H, W).

    Args:
        tokenizer: a :class:`vilt.tokenization.ViltTokenizer`.
        task: a trainable task, or its name (:data:`vilt.train.tasks.TRAINING_TASKS`).
        max_text_length: truncate texts to this many tokens.
    """

    def __init__(self, tokenizer: Any, task: str | TrainingTask, max_text_length: int = 40) -> None:
        self.tokenizer, self.max_text_length = tokenizer, max_text_length
        self.task = training_task(task) if isinstance(task, str) else task

    def __call__(self, items: Sequence[Item | Skipped]) -> dict[str, Any]:
        skipped = Counter(it.reason for it in items if isinstance(it, Skipped))
        good = [it for it in items if isinstance(it, Item)]
        batch: dict[str, Any] = {"skipped": skipped, "index": torch.tensor([it.index for it in good])}
        if not good:
            return batch
        texts = [t for it in good for t in it.texts]
        batch.update(
            self.tokenizer(
                texts,
                padding="longest",
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
        )
        n_images = len(good[0].images)
        pixel_values, pixel_mask = pad_images([im for it in good for im in it.images])  # (B * n, C, H, W)
        pixel_values = pixel_values.view(len(good), n_images, *pixel_values.shape[1:])  # (B, n, C, H, W)
        pixel_mask = pixel_mask.view(len(good), n_images, *pixel_mask.shape[1:])  # (B, n, H, W)
        self.task.collate(batch, good, pixel_values, pixel_mask)
        return batch
