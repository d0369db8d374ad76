"""A job's output as committed part files: each holds a fixed range of row ids and appears all at once.

A job cuts its input rows into ranges of ``part_rows`` (part ``k`` holds rows ``k * part_rows`` up to the
next part's first row) and writes each range, once all its rows are done, as one file named by the
range, ``part-<start>-<stop>.parquet`` (or ``.jsonl``), through :func:`vilt.files.atomic_write` (a
temporary file renamed over the name). So the output directory only ever holds complete parts: a job
killed at any moment leaves whole parts and nothing else, and a rerun computes exactly the ranges
that have no file yet. No row is lost or written twice.

``_job.json`` beside the parts records what the parts are the answers to (task, model, options, the
input's checksum and the part size); a rerun with other settings is refused instead of mixing answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ViltInputError
from ..files import atomic_write, read_json

FORMATS = ("parquet", "jsonl")
MANIFEST = "_job.json"
_PART = re.compile(r"^part-(\d{12})-(\d{12})\.(parquet|jsonl)$")


def part_name(start: int, stop: int, fmt: str) -> str:
    """The file name of the part holding rows ``start`` to ``stop - 1``."""
    return f"part-{start:012d}-{stop:012d}.{fmt}"


def part_ranges(num_rows: int, part_rows: int) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of a job of ``num_rows`` rows, ``part_rows`` per part."""
    if part_rows < 1:
        raise ViltInputError(f"part_rows must be a positive integer, got {part_rows!r}")
    return [(start, min(start + part_rows, num_rows)) for start in range(0, num_rows, part_rows)]


def committed_parts(directory: str | os.PathLike[str]) -> dict[tuple[int, int], Path]:
    """The parts already in ``directory``: (start, stop) -> file. Temporary files are not parts."""
    found = {}
    folder = Path(directory)
    if folder.is_dir():
        for path in folder.iterdir():
            match = _PART.match(path.name)
            if match:
                found[(int(match[1]), int(match[2]))] = path
    return found


def file_checksum(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (what ties a job's parts to its input)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_job(directory: str | os.PathLike[str], job: dict[str, Any], overwrite: bool = False) -> None:
    """Start or resume the job described by ``job`` in ``directory``.

    A new directory gets the manifest; one holding the same job is resumed as it is; one holding
    another job (other input, model, options or part size) is refused, or emptied of its parts when
    ``overwrite``.

    Raises:
        ViltInputError: the directory holds another job's parts (and not ``overwrite``), or is a file.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ViltInputError(f"--output {folder} is a file; name a directory for the parts")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if manifest.exists():
        before = read_json(manifest)
        if before == job:
            return
        if not overwrite:
            changed = sorted(key for key in {*before, *job} if before.get(key) != job.get(key))
            raise ViltInputError(
                f"{folder} holds the parts of another job (it differs in: {', '.join(changed)}); "
                "name another output directory, or pass --overwrite to start this job there afresh"
            )
    if overwrite:
        for path in committed_parts(folder).values():
            path.unlink()
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(job, indent=1, sort_keys=True) + "\n"))


def write_part(directory: str | os.PathLike[str], start: int, stop: int, table: Any, fmt: str) -> Path:
    """Commit rows ``start`` to ``stop - 1`` (a ``pyarrow.Table`` of exactly those rows) as one part."""
    import pyarrow.parquet as pq

    if table.num_rows != stop - start:
        raise RuntimeError(f"part {start}-{stop} has {table.num_rows} rows, expected {stop - start}")
    path = Path(directory) / part_name(start, stop, fmt)
    if fmt == "parquet":
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    else:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
        atomic_write(path, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    return path


def read_parts(directory: str | os.PathLike[str]) -> Any:
    """Every committed part of ``directory`` as one ``pyarrow.Table``, in row order."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    tables = []
    for _, path in sorted(committed_parts(directory).items()):
        tables.append(pq.read_table(path) if path.suffix == ".parquet" else pj.read_json(path))
    if not tables:
        raise ViltInputError(f"{directory} holds no committed parts")
    return pa.concat_tables(tables, promote_options="permissive")


def count_rows(directory: str | os.PathLike[str]) -> tuple[int, int]:
    """(rows, rows with an error) over the committed parts, reading only their ``error`` column."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    rows = errors = 0
    for path in committed_parts(directory).values():
        if path.suffix == ".parquet":
            column = pq.read_table(path, columns=["error"]).column("error")
        else:
            column = pj.read_json(path).column("error")
        rows += len(column)
        errors += len(column) - column.null_count
    return rows, errors
