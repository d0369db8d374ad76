"""Batch inference on Ray Data: ``vilt batch vqa|nlvr2|fill-mask`` and :func:`run` / :func:`predict`.

The flow of :func:`run` (one job; rerunning it resumes)::

    table (jsonl / csv / parquet; row id = position)        read by the driver; relative image paths
       |                                                      resolved against the table's folder
    the rows of the parts not committed yet -> ray.data.Dataset, blocks of at most 256 rows
       |  map_batches(prepare_rows)      CPU tasks: check the text, load the image(s) (paths, URLs),
       |                                 run the processor on each row (resize, normalise, tokenize);
       |                                 a bad row keeps its error in the "error" column
       |  map_batches(Predictor)         an actor pool of model replicas (``replicas``, each with
       |                                 ``replica_cpus`` CPUs or ``replica_gpus`` GPUs): batches of
       |                                 ``batch_size`` rows padded and run through the task pipeline's
       |                                 own prediction
    the driver commits each range of ``part_rows`` rows as one part file once all its rows are back
    (:mod:`vilt.scale.parts`), keyed by the range: nothing lost, nothing written twice

Every answer is the in-process pipeline's: the CPU tasks run the pipeline's own input checks and
processor call on each row, the replicas its own ``_predict`` on the padded batch, so only padding
differs (scores agree within the dtype's tolerance).

Output columns: ``row_id`` (the input row's position), ``id`` (when the input has one), ``error`` (null,
or why the row could not be answered), ``result`` (the pipeline's answer as JSON), and per task:
vqa ``answer`` and ``score`` (the best answer), nlvr2 ``label`` and ``score``, fill-mask ``sequence``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ViltInputError
from ..images import DEFAULT_TIMEOUT, is_url
from ..tasks import find_task
from . import parts
from .cluster import connect, import_ray

logger = logging.getLogger(__name__)

# pipeline task -> (image columns, accepted text column names: the first present is used)
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "visual-question-answering": (("image",), ("question", "text")),
    "nlvr2": (("image_a", "image_b"), ("text", "statement", "sentence")),
    "fill-mask": (("image",), ("text",)),
}
BATCH_TASKS = tuple(COLUMNS)
FEATURES = ("pixel_values", "pixel_mask", "input_ids", "attention_mask", "token_type_ids")
BLOCK_ROWS = 256  # rows per input block: the unit of a CPU task
INPUT_FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
ROW_ERRORS = (ValueError, OSError, TypeError)  # what a bad row raises (ViltInputError is a ValueError)


# ----------------------------------------------------------------------------- the input table


def read_table(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> Any:
    """A jsonl, csv or parquet table as a ``pyarrow.Table``, relative image paths made absolute.

    Args:
        path: the table; its suffix names the format.
        image_root: the folder relative image paths start from (default: the table's folder).
    """
    import pyarrow.csv as pc
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    path = Path(path)
    kind = INPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ViltInputError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; use {', '.join(INPUT_FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no input table at {path}")
    try:
        table = {"json": pj.read_json, "csv": pc.read_csv, "parquet": pq.read_table}[kind](path)
    except Exception as err:  # pyarrow raises its own error types for every parse failure
        raise ViltInputError(f"{path} is not a readable {kind} table: {err}") from err
    root = Path(image_root) if image_root is not None else path.parent
    for column in ("image", "image_a", "image_b", "images"):
        if column in table.column_names:
            values = [_absolute(value, root) for value in table.column(column).to_pylist()]
            table = table.set_column(table.column_names.index(column), column, _array(values))
    return table


def _absolute(value: Any, root: Path) -> Any:
    """An image cell with a relative path that exists under ``root`` made absolute (others as they are)."""
    if isinstance(value, list):
        return [_absolute(item, root) for item in value]
    if not isinstance(value, str) or is_url(value) or value.startswith("data:") or os.path.isabs(value):
        return value
    candidate = root / value
    return str(candidate.resolve()) if len(value) < 4096 and candidate.exists() else value


def _array(values: list[Any]) -> Any:
    import pyarrow as pa

    return pa.array(values)


def task_columns(task: str, column_names: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The image columns and the text column a table needs for ``task``.

    Raises:
        ViltInputError: a column is missing; the message lists what the table has.
    """
    images, texts = COLUMNS[task]
    if task == "nlvr2" and "images" in column_names:
        images = ("images",)
    text = next((name for name in texts if name in column_names), None)
    missing = [name for name in images if name not in column_names] + ([] if text else [" or ".join(texts)])
    if missing:
        raise ViltInputError(
            f"the {task} input needs the column(s) {', '.join(missing)}; the table has "
            f"{', '.join(column_names) or 'no columns'}"
        )
    return images, text  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the two stages


@functools.lru_cache(maxsize=4)
def _row_pipeline(task: str, source: str) -> Any:
    """The task's pipeline without a model (one per worker process): its checks and its processor."""
    import torch

    from ..pipelines import PIPELINES, load_processor, read_model_config

    cls = PIPELINES[task]
    return cls(None, read_model_config(source), load_processor(source), torch.device("cpu"), torch.float32)


def prepare_rows(
    batch: dict[str, np.ndarray], task: str, source: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, np.ndarray]:
    """The CPU stage: each row's processor outputs (one input each), or its error.

    Runs the pipeline's own checks on the text and the image(s) (URLs fetched here), loads the images
    as the pipeline loads them, and calls the processor on the row alone (no padding).
    """
    pipe = _row_pipeline(task, source)
    image_columns, text_column = task_columns(task, list(batch))
    num_rows = len(batch[text_column])
    features: dict[str, list[np.ndarray]] = {key: [] for key in FEATURES}
    errors: list[str | None] = []
    for row in range(num_rows):
        if "images" in image_columns:
            images = list(batch["images"][row])
        else:
            images = [batch[column][row] for column in image_columns]
        try:
            text = pipe._check_text(batch[text_column][row], f"the {pipe.text_name}")
            item = pipe._input(images, text, "", timeout)
            encoded = pipe._encode([item])
            values = {key: encoded[key][0].numpy() for key in FEATURES}
            errors.append(None)
        except ROW_ERRORS as err:
            values = {key: _EMPTY[key][pipe.images_per_input > 1] for key in FEATURES}
            errors.append(f"{type(err).__name__}: {err}")
        for key in FEATURES:
            features[key].append(values[key])
    out = {key: value for key, value in batch.items() if key not in FEATURES and key != "error"}
    out.update({key: _ragged(values) for key, values in features.items()})
    out["error"] = np.array(errors, dtype=object)
    return out


# empty arrays of each feature's rank (one image, two images) for the rows that failed
_EMPTY = {
    "pixel_values": (np.zeros((3, 0, 0), np.float32), np.zeros((2, 3, 0, 0), np.float32)),
    "pixel_mask": (np.zeros((0, 0), np.int64), np.zeros((2, 0, 0), np.int64)),
    **{key: (np.zeros(0, np.int64),) * 2 for key in ("input_ids", "attention_mask", "token_type_ids")},
}


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of arrays of different shapes (Ray Data stores it as a variable-shaped tensor)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def pad_rows(columns: dict[str, np.ndarray], rows: Sequence[int], pad_token_id: int) -> dict[str, Any]:
    """Stack the processor outputs of ``rows`` into one batch, padded as the processor pads a batch:
    images with zeros at the bottom and right (``pixel_mask`` 0 there), texts with the pad token."""
    import torch

    batch = {}
    for key in FEATURES:
        arrays = [np.asarray(columns[key][row]) for row in rows]
        shape = np.max([array.shape for array in arrays], axis=0)
        padded = np.full((len(arrays), *shape), pad_token_id if key == "input_ids" else 0, arrays[0].dtype)
        for out, array in zip(padded, arrays):
            out[tuple(slice(0, size) for size in array.shape)] = array
        batch[key] = torch.from_numpy(padded)
    return batch


class Predictor:
    """The model stage: one replica of the task pipeline (a Ray actor), answering padded batches.

    Args:
        task: the pipeline task.
        model: what :func:`vilt.pipeline` takes (a directory, a hub id, ``bundled``).
        device, dtype: as for :func:`vilt.pipeline` (None picks).
        options: the task's prediction options (vqa: ``top_k``).
    """

    def __init__(
        self, task: str, model: str, device: str | None, dtype: str | None, options: dict[str, Any]
    ) -> None:
        from ..pipelines import pipeline
        from ..pipelines.base import check_top_k

        self.pipe = pipeline(task, model, device=device, dtype=dtype)
        self.options = dict(options)
        if "top_k" in self.options:
            self.options["top_k"] = check_top_k(self.options["top_k"], self.pipe.config.num_labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..feature import BatchFeature

        errors = [_text(error) for error in batch["error"]]
        ok = [row for row, error in enumerate(errors) if error is None]
        results: list[str | None] = [None] * len(errors)
        if ok:
            pad_id = self.pipe.processor.tokenizer.pad_token_id
            features = BatchFeature(pad_rows(batch, ok, pad_id))
            for row, result in zip(ok, self.pipe._predict(features, **self.options)):
                results[row] = json.dumps(result)
        out = {key: value for key, value in batch.items() if key not in FEATURES}
        out["result"] = np.array(results, dtype=object)
        return out


def predict(
    dataset: Any,
    task: str,
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 32,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    decode_cpus: float = 0.5,
    top_k: int = 5,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Add the task's answers to a Ray Dataset (lazy: Ray runs it when the dataset is consumed).

    Args:
        dataset: a ``ray.data.Dataset`` with the task's columns (:data:`COLUMNS`: vqa ``image`` and
            ``question`` or ``text``; nlvr2 ``image_a`` and ``image_b`` or ``images``, and ``text``;
            fill-mask ``image`` and ``text``). Images are paths every worker can read, URLs, or bytes.
        task: "vqa", "nlvr2" or "fill-mask" (or their pipeline names).
        model: a directory, a hub id or ``bundled`` (None: the bundled model, for vqa).
        device, dtype: as for :func:`vilt.pipeline`.
        batch_size: rows per forward pass.
        replicas: model replicas (Ray actors).
        replica_cpus, replica_gpus: what each replica reserves (a GPU replica runs on CUDA).
        decode_cpus: CPUs each decoding task reserves.
        top_k: vqa: answers kept per question.
        timeout: seconds to wait for an image URL.

    Returns:
        The dataset with ``error`` and ``result`` columns added (see the module docstring).
    """
    from ..hub import model_source
    from ..pipelines.base import check_batch_size

    spec, source = _check_task_and_model(task, model)
    check_batch_size(batch_size)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ViltInputError(f"replicas must be a positive integer, got {replicas!r}")
    options = {"top_k": top_k} if spec.pipeline == "visual-question-answering" else {}
    prepared = dataset.map_batches(
        prepare_rows,
        fn_kwargs={"task": spec.pipeline, "source": model_source(source), "timeout": timeout},
        batch_size=None,
        batch_format="numpy",
        num_cpus=decode_cpus,
    )
    ray = import_ray()
    return prepared.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "task": spec.pipeline,
            "model": source,
            "device": ("cuda" if replica_gpus else device),
            "dtype": dtype,
            "options": options,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=replica_cpus,
        num_gpus=replica_gpus,
    )


def _check_task_and_model(task: str, model: str | os.PathLike[str] | None) -> tuple[Any, str]:
    spec = find_task(task)
    if spec.pipeline not in COLUMNS:
        raise ViltInputError(
            f"vilt batch runs {', '.join(find_task(t).name for t in COLUMNS)} on tables; "
            f"{task!r} is not one of them (rank a corpus with vilt.scale.ranking)"
        )
    if model is None:
        if spec.pipeline != "visual-question-answering":
            raise ViltInputError(f"the {spec.name} task needs a model: pass a directory or a hub id")
        return spec, "bundled"
    return spec, os.fspath(model)


# ----------------------------------------------------------------------------- the job


def run(
    task: str,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    address: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    output_format: str = "parquet",
    part_rows: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Answer every row of a table, as a resumable job; returns the output as a Ray Dataset.

    Args:
        task: "vqa", "nlvr2" or "fill-mask".
        input: a jsonl, csv or parquet table with the task's columns (:func:`predict`); row ``i``'s answer
            has ``row_id`` ``i``.
        output: the directory of the committed parts (:mod:`vilt.scale.parts`); rerunning the same job
            there computes only the parts it lacks.
        model: a directory, a hub id or ``bundled``.
        address: None for an embedded local Ray; a cluster's address to join it.
        image_root: where relative image paths start (default: the table's folder).
        output_format: "parquet" or "jsonl".
        part_rows: rows per committed part.
        overwrite: start afresh in a directory that holds another job's parts.
        progress: show progress bars.
        **options: :func:`predict`'s options (batch_size, replicas, top_k, ...).

    Returns:
        A ``ray.data.Dataset`` of every part of the output (sort by ``row_id`` for the input order).
    """
    from tqdm.auto import tqdm

    spec, source = _check_task_and_model(task, model)
    if output_format not in parts.FORMATS:
        raise ViltInputError(
            f"output_format must be one of {', '.join(parts.FORMATS)}, got {output_format!r}"
        )
    table = read_table(input, image_root)
    task_columns(spec.pipeline, table.column_names)  # before Ray starts
    job = {
        "task": spec.name,
        "model": source,
        "input": os.path.abspath(input),
        "input_sha256": parts.file_checksum(input),
        "rows": table.num_rows,
        "part_rows": part_rows,
        "format": output_format,
        "options": {k: options[k] for k in ("top_k", "dtype") if k in options},
    }
    ranges = parts.part_ranges(table.num_rows, part_rows)
    parts.open_job(output, job, overwrite)
    done = parts.committed_parts(output)
    todo = [r for r in ranges if r not in done]
    logger.info("%s: %d of %d parts to do (%d rows)", output, len(todo), len(ranges), table.num_rows)
    ray = connect(address)
    _set_progress(ray, progress)
    if todo:
        blocks = [_rows(table, start, stop) for start, stop in todo]
        blocks = [
            block.slice(i, BLOCK_ROWS) for block in blocks for i in range(0, block.num_rows, BLOCK_ROWS)
        ]
        answered = predict(ray.data.from_arrow(blocks), spec.pipeline, source, **options)
        total = sum(stop - start for start, stop in todo)
        with tqdm(total=total, desc=f"vilt batch {spec.name}", unit="row", disable=not progress) as bar:
            _commit(answered, output, spec.pipeline, part_rows, output_format, todo, bar)
    files = [str(path) for _, path in sorted(parts.committed_parts(output).items())]
    reader = ray.data.read_parquet if output_format == "parquet" else ray.data.read_json
    return reader(files)


def _rows(table: Any, start: int, stop: int) -> Any:
    """Rows ``start`` to ``stop - 1`` with their ``row_id``."""
    import pyarrow as pa

    rows = table.slice(start, stop - start)
    return rows.append_column("row_id", pa.array(np.arange(start, stop, dtype=np.int64)))


def _set_progress(ray: Any, progress: bool) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.enable_operator_progress_bars = progress


def _commit(
    answered: Any,
    output: str | os.PathLike[str],
    task: str,
    part_rows: int,
    fmt: str,
    todo: list[tuple[int, int]],
    bar: Any,
) -> None:
    """Collect the answered rows by part; commit each part as soon as all its rows are in."""
    import pyarrow as pa

    expected = {start // part_rows: (start, stop) for start, stop in todo}
    pending: dict[int, dict[int, dict[str, Any]]] = {}
    for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
        keep = [key for key in ("row_id", "id", "error", "result") if key in batch]
        for values in zip(*(batch[key] for key in keep)):
            row = dict(zip(keep, values))
            row_id = int(row["row_id"])
            part = pending.setdefault(row_id // part_rows, {})
            if row_id in part:
                continue  # a retried task's second answer: the row is kept once
            part[row_id] = _output_row(row, task)
            bar.update(1)
            start, stop = expected[row_id // part_rows]
            if len(part) == stop - start:
                rows = [part[i] for i in range(start, stop)]
                parts.write_part(
                    output, start, stop, pa.Table.from_pylist(rows, schema=_schema(task, rows)), fmt
                )
                del pending[row_id // part_rows]
    if pending:
        missing = sum(expected[p][1] - expected[p][0] - len(rows) for p, rows in pending.items())
        raise RuntimeError(f"the job ended with {missing} rows unanswered; rerun it to finish them")


def _output_row(row: dict[str, Any], task: str) -> dict[str, Any]:
    """One output row: ids, error, the result as JSON and the task's summary columns."""
    out: dict[str, Any] = {"row_id": int(row["row_id"])}
    if "id" in row:
        out["id"] = row["id"].item() if isinstance(row["id"], np.generic) else row["id"]
    out["error"] = _text(row["error"])
    out["result"] = _text(row["result"])
    result = json.loads(out["result"]) if out["result"] is not None else None
    for name, value in _summary(task, result).items():
        out[name] = value
    return out


def _text(value: Any) -> str | None:
    """A string cell; Ray Data hands a missing one back as None or NaN."""
    return str(value) if isinstance(value, str) else None


def _summary(task: str, result: Any) -> dict[str, Any]:
    """The columns that summarise a task's result (None for a row with an error)."""
    if task == "visual-question-answering":
        best = result[0] if result else {}
        return {"answer": best.get("answer"), "score": best.get("score")}
    if task == "nlvr2":
        return {
            "label": None if result is None else result["label"],
            "score": None if result is None else result["score"],
        }
    return {"sequence": None if result is None else result["sequence"]}


def _schema(task: str, rows: list[dict[str, Any]]) -> Any:
    """The output schema: fixed types, so parts with only errors read back like the others."""
    import pyarrow as pa

    fields = [("row_id", pa.int64())]
    if "id" in rows[0]:
        fields.append(("id", pa.array([row["id"] for row in rows]).type))
    fields += [("error", pa.string()), ("result", pa.string())]
    summary = {
        "visual-question-answering": [("answer", pa.string()), ("score", pa.float64())],
        "nlvr2": [("label", pa.bool_()), ("score", pa.float64())],
        "fill-mask": [("sequence", pa.string())],
    }[task]
    return pa.schema(fields + summary)


__all__ = [
    "BATCH_TASKS",
    "COLUMNS",
    "Predictor",
    "import_ray",
    "predict",
    "prepare_rows",
    "read_table",
    "run",
]
