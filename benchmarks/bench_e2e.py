"""Benchmark 2: end-to-end VQA on 64 photographs read from files, ours against transformers.

Each contestant answers 64 (image file, question) pairs: decode, preprocess, tokenize, forward, top-5.
The model is loaded once beforehand (not timed). The photographs are scikit-image's samples and
matplotlib's ``grace_hopper.jpg`` (see ``bench_preprocess.make_paths``), of mixed sizes.

* ``ours``: ``vilt.pipeline("visual-question-answering", model=DIR)`` with its defaults (device and
  dtype chosen automatically: bfloat16 on AMX/AVX512-BF16 CPUs; batches of 32 sorted by size,
  preprocessing overlapped with the model; the encoder fast path);
* ``reference processor + model``: what a transformers user writes with the defaults: float32
  ``ViltForQuestionAnswering`` and ``ViltProcessor`` (``ViltImageProcessorPil``), images opened with
  PIL, in batches of 32 (the same batch size), ``sigmoid().topk(5)``;
* ``transformers.pipeline``: ``pipeline("visual-question-answering", model=DIR,
  image_processor=ViltImageProcessorPil())`` on the list of {"image": path, "question"} dicts.

The top answers are compared: ours (bfloat16) against the reference (float32) shows what bfloat16
changes. With ``--only NAME --once`` one contestant runs once and prints its peak resident memory
(used by ``bench_memory.py`` in fresh processes).

Run: ``python benchmarks/bench_e2e.py [--repetitions N]``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from bench_preprocess import make_paths
from common import Section, alternate, memory_bench_main, model_dir, peak_rss_mib, set_threads, table

QUESTIONS = (
    "what is in the picture?",
    "what color is the main object?",
    "how many people are there?",
    "is this photo taken indoors?",
    "what is the person doing?",
    "is there an animal?",
    "what is on the left side of the image?",
    "is it daytime?",
)
BATCH_SIZE = 32
TOP_K = 5


def questions_for(paths: list[str]) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(len(paths))]


def ours_runner(directory: str) -> Callable[[list[str], list[str]], list[list[str]]]:
    import vilt

    vqa = vilt.pipeline("visual-question-answering", model=directory)

    def run(paths: list[str], questions: list[str]) -> list[list[str]]:
        results = vqa([{"image": p, "question": q} for p, q in zip(paths, questions)], top_k=TOP_K)
        return [[answer["answer"] for answer in result] for result in results]

    return run


def reference_runner(directory: str) -> Callable[[list[str], list[str]], list[list[str]]]:
    from PIL import Image
    from transformers import ViltForQuestionAnswering, ViltProcessor

    processor = ViltProcessor.from_pretrained(directory)
    model = ViltForQuestionAnswering.from_pretrained(directory).eval()

    def run(paths: list[str], questions: list[str]) -> list[list[str]]:
        answers = []
        for start in range(0, len(paths), BATCH_SIZE):
            images = [Image.open(path).convert("RGB") for path in paths[start : start + BATCH_SIZE]]
            inputs = processor(
                images=images, text=questions[start : start + BATCH_SIZE], padding=True, return_tensors="pt"
            )
            with torch.no_grad():
                ids = model(**inputs).logits.sigmoid().topk(TOP_K, dim=-1).indices  # (B, TOP_K)
            answers += [[model.config.id2label[i] for i in row] for row in ids.tolist()]
        return answers

    return run


def reference_pipeline_runner(directory: str) -> Callable[[list[str], list[str]], list[list[str]]]:
    import transformers
    from transformers import ViltImageProcessorPil

    vqa = transformers.pipeline(
        "visual-question-answering", model=directory, image_processor=ViltImageProcessorPil()
    )

    def run(paths: list[str], questions: list[str]) -> list[list[str]]:
        results = vqa([{"image": p, "question": q} for p, q in zip(paths, questions)], top_k=TOP_K)
        return [[answer["answer"] for answer in result] for result in results]

    return run


RUNNERS = {
    "ours": ours_runner,
    "reference processor + model": reference_runner,
    "transformers.pipeline": reference_pipeline_runner,
}


def available_runners(directory: str) -> tuple[dict[str, Callable[..., list[list[str]]]], dict[str, str]]:
    """The contestants that can be built here, and why the others cannot (e.g. a task that the
    installed transformers removed)."""
    runners, unavailable = {}, {}
    for name, make in RUNNERS.items():
        try:
            runners[name] = make(directory)
        except KeyError as err:  # transformers 5 raises KeyError for removed pipeline tasks
            unavailable[name] = str(err).strip("'\"").split(". ")[0].replace("|", "/")
    return runners, unavailable


def agreement(ours: list[list[str]], reference: list[list[str]]) -> str:
    """Top-1 agreement and mean top-5 overlap of two answer lists."""
    top1 = sum(a[0] == b[0] for a, b in zip(ours, reference)) / len(ours)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(ours, reference)) / (TOP_K * len(ours))
    return f"top-1 answers equal {100 * top1:.0f}%, top-5 overlap {100 * overlap:.0f}%"


def run(repetitions: int = 3) -> Section:
    """Time the three contestants on the same 64 files; return the Markdown section."""
    set_threads()
    directory = str(model_dir())
    with tempfile.TemporaryDirectory() as folder:
        paths = make_paths(folder)
        questions = questions_for(paths)
        runners, unavailable = available_runners(directory)
        answers = {name: runner(paths, questions) for name, runner in runners.items()}
        calls = {name: lambda r=r: r(paths, questions) for name, r in runners.items()}
        timings = alternate(calls, repetitions, warmup=0)  # the answers above were the warm-up
    reference_s = timings.median("reference processor + model")
    rows = [
        [
            name,
            f"{timings.median(name):.2f}",
            timings.spread(name),
            f"{len(paths) / timings.median(name):.1f}",
            f"{reference_s / timings.median(name):.2f}x",
        ]
        for name in runners
    ]
    rows += [[name, "not run", reason, "", ""] for name, reason in unavailable.items()]
    lines = [
        f"## 2. End-to-end VQA, {len(paths)} photographs from files (decode, preprocess, tokenize, forward, top-{TOP_K})",
        "",
        table(
            ["contestant", "median s", "spread ms", "examples/s", "speed vs reference processor + model"],
            rows,
        ),
        "",
        f"Medians of {repetitions} alternating repetitions after a warm-up run. Answers, ours (its default "
        f"dtype {default_dtype()}) vs reference float32: "
        f"{agreement(answers['ours'], answers['reference processor + model'])}.",
    ]
    figures = {"ours / reference": reference_s / timings.median("ours")}
    return Section("\n".join(lines) + "\n", figures)


def default_dtype() -> str:
    from vilt.pipelines import select_device_and_dtype

    return str(select_device_and_dtype()[1]).removeprefix("torch.")


def run_once(name: str) -> float:
    """Run one contestant once in this process; return its peak resident memory in MiB."""
    set_threads()
    directory = str(model_dir())
    with tempfile.TemporaryDirectory() as folder:
        paths = make_paths(folder)
        RUNNERS[name](directory)(paths, questions_for(paths))
    return peak_rss_mib()


def main() -> None:
    memory_bench_main(__doc__, RUNNERS, run, run_once)


if __name__ == "__main__":
    main()
