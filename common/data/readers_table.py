"""CSV/TSV reader: the GUE benchmark files and our generator's own layout.

The first non-blank row is a header naming the columns (case and surrounding spaces ignored):

* ``sequence`` and ``label`` for sequence tasks (GUE: ``sequence,label``), or ``sequence`` and
  ``labels`` for per-position tasks, where ``labels`` holds one class digit per base;
* optional ``id`` (default ``<file name>:<line>``) and ``species`` (default: the ``species=``
  argument); any other column is ignored.

``.csv`` files are comma-separated, ``.tsv`` files tab-separated; either may end in ``.gz``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.data.dataset import Record
from common.data.readers_common import (
    EmptyFileError,
    HeaderError,
    RowError,
    Where,
    check_sequence,
    claim_id,
    numbered_lines,
    parse_class_label,
    parse_position_labels,
)
from common.tasks import TaskSpec


def label_column(task: TaskSpec) -> str:
    """The column holding labels: ``labels`` (a digit per base) for per-position tasks, else ``label``."""
    return "labels" if task.per_position else "label"


def table_delimiter(path: Path) -> str:
    """``,`` for ``.csv`` / ``.csv.gz``, tab for everything else we accept (``.tsv``)."""
    name = path.name.lower().removesuffix(".gz")
    return "," if name.endswith(".csv") else "\t"


@dataclass(frozen=True)
class Columns:
    """Where each known column sits in a row, and how many fields a row must have."""

    sequence: int
    label: int
    id: int | None
    species: int | None
    width: int


def read_table(path: Path, *, task: TaskSpec, species: str | None, max_len: int | None) -> list[Record]:
    """All rows of a CSV/TSV file as checked records, in file order.

    Raises:
        EmptyFileError: no header, or a header and no rows.
        HeaderError, RowError, BadSequenceError, LabelError, DuplicateIdError, CompressedFileError.
    """
    rows = csv.reader(_lines(path), delimiter=table_delimiter(path))
    columns = _read_header(rows, path, task)
    records: list[Record] = []
    seen: dict[str, Where] = {}
    for row in rows:
        if not any(field.strip() for field in row):
            continue
        where = Where(path, rows.line_num)
        record = _record(row, columns, where, task, species, max_len)
        claim_id(seen, record.id, where)
        records.append(record)
    if not records:
        raise EmptyFileError(f"{path}: table has a header but no rows; expected one record per line")
    return records


def _lines(path: Path) -> Iterator[str]:
    # Every line is passed on, blank ones included, so the csv reader's line_num is the file's line.
    for _, line in numbered_lines(path):
        yield line


def _read_header(rows: Iterator[list[str]], path: Path, task: TaskSpec) -> Columns:
    header = next((row for row in rows if any(field.strip() for field in row)), None)
    if header is None:
        raise EmptyFileError(f"{path}: empty file; expected a header row naming columns {_expected(task)}")
    where = Where(path, rows.line_num)
    names = [field.strip().lower() for field in header]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise HeaderError(
            f"{where}: column(s) {', '.join(duplicated)} named twice; expected each column once"
        )
    missing = [name for name in ("sequence", label_column(task)) if name not in names]
    if missing:
        raise HeaderError(
            f"{where}: header {header!r} lacks column(s) {', '.join(missing)}; "
            f"expected a first row naming columns {_expected(task)}{_label_hint(names, task)}"
        )
    return Columns(
        sequence=names.index("sequence"),
        label=names.index(label_column(task)),
        id=names.index("id") if "id" in names else None,
        species=names.index("species") if "species" in names else None,
        width=len(names),
    )


def _expected(task: TaskSpec) -> str:
    return f"sequence,{label_column(task)} (optionally id, species)"


def _label_hint(names: list[str], task: TaskSpec) -> str:
    other = "label" if task.per_position else "labels"
    if other in names:
        return f" (column {other!r} is for {'sequence' if task.per_position else 'per-position'} tasks)"
    return ""


def _record(row: list[str], columns: Columns, where: Where, task: TaskSpec, species: str | None,
            max_len: int | None) -> Record:
    if len(row) != columns.width:
        raise RowError(f"{where}: {len(row)} fields; expected {columns.width} as in the header")
    record_id = row[columns.id].strip() if columns.id is not None else f"{where.path.name}:{where.line}"
    if not record_id:
        raise RowError(f"{where}: empty id; expected a non-empty value in column 'id'")
    where = Where(where.path, where.line, record_id)
    sequence = row[columns.sequence].strip()
    check_sequence(sequence, where, max_len=max_len)
    label_text = row[columns.label].strip()
    label = (parse_position_labels(label_text, len(sequence), task, where) if task.per_position
             else parse_class_label(label_text, task, where))
    row_species = row[columns.species].strip() if columns.species is not None else ""
    return Record(record_id, sequence, label, row_species or species)
