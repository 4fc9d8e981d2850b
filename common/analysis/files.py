"""Files the analysis commands read and write: unlabelled sequences in, TSV tables out.

Inputs are checked while the reader still knows the line, with the readers' own exception types
(:mod:`common.data.readers_common`), so a message names the file, the 1-based line, the record
and the bad value:

* sequences: FASTA (``.fa``, ``.fasta``, ``.fna``; the id is the header's first word) or a
  CSV/TSV table with a header naming a ``sequence`` column and optionally an ``id`` column
  (default id ``<file name>:<line>``); either may end in ``.gz``;
* variants: a CSV/TSV table with columns ``id``, ``ref``, ``alt`` and optionally ``task``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from common.analysis.scoring import Variant, VariantImpact
from common.data.readers_common import (
    EmptyFileError,
    HeaderError,
    RowError,
    Where,
    check_length,
    check_sequence,
    claim_id,
    first_bad_base,
    line_of,
    numbered_lines,
    require_file,
    unknown_base_error,
)
from common.data.readers_fasta import fasta_entries
from common.data.readers_table import table_delimiter
from common.tasks import get_task

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")


def _is_fasta(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(FASTA_SUFFIXES)


def read_sequences(path: str | Path, *, max_len: int | None = None) -> list[tuple[str, str]]:
    """``(id, sequence)`` pairs of a FASTA file or a table with a ``sequence`` column, in file order.

    Args:
        path: the file.
        max_len: longest sequence allowed.

    Returns:
        The pairs; ids are unique.

    Raises:
        MissingFileError: no such file.
        ReaderError: as one of its subclasses (EmptyFileError, HeaderError, RowError,
            FastaFormatError, BadSequenceError, DuplicateIdError, CompressedFileError), naming the
            file, line and record.
    """
    path = require_file(path, "sequence file")
    pairs = _fasta_sequences(path, max_len) if _is_fasta(path) else _table_sequences(path, max_len)
    seen: dict[str, Where] = {}
    for (record_id, _), where in pairs:
        claim_id(seen, record_id, where)
    return [pair for pair, _ in pairs]


def _fasta_sequences(path: Path, max_len: int | None) -> list[tuple[tuple[str, str], Where]]:
    pairs = []
    for entry in fasta_entries(path):
        sequence = "".join(text for _, text in entry.lines)
        check_length(sequence, Where(path, entry.header_line, entry.word), max_len=max_len)
        bad = first_bad_base(sequence)
        if bad is not None:
            raise unknown_base_error(sequence, bad, Where(path, line_of(entry.lines, bad), entry.word))
        pairs.append(((entry.word, sequence), Where(path, entry.header_line)))
    return pairs


def _table_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[dict[str, str], Where]]:
    """Each non-blank row of a CSV/TSV file as ``{column: stripped value}`` with where it was."""
    lines = (line for _, line in numbered_lines(path))
    rows = csv.reader(lines, delimiter=table_delimiter(path))
    header = next((row for row in rows if any(f.strip() for f in row)), None)
    if header is None:
        raise EmptyFileError(f"{path}: empty file; expected a header row naming columns {', '.join(required)}")
    names = [name.strip().lower() for name in header]
    missing = [name for name in required if name not in names]
    if missing:
        raise HeaderError(f"{Where(path, rows.line_num)}: header {header!r} lacks column(s) "
                          f"{', '.join(missing)}; expected a first row naming {', '.join(required)}")
    found = False
    for row in rows:
        if not any(f.strip() for f in row):
            continue
        where = Where(path, rows.line_num)
        if len(row) != len(names):
            raise RowError(f"{where}: {len(row)} fields; expected {len(names)} as in the header")
        found = True
        yield {name: value.strip() for name, value in zip(names, row, strict=True)}, where
    if not found:
        raise EmptyFileError(f"{path}: table has a header but no rows; expected one record per line")


def _table_sequences(path: Path, max_len: int | None) -> list[tuple[tuple[str, str], Where]]:
    pairs = []
    for row, where in _table_rows(path, ("sequence",)):
        record_id = row.get("id") or f"{path.name}:{where.line}"
        check_sequence(row["sequence"], Where(path, where.line, record_id), max_len=max_len)
        pairs.append(((record_id, row["sequence"]), where))
    return pairs


def read_variants(path: str | Path, *, max_len: int | None = None) -> list[Variant]:
    """Variants of a CSV/TSV table with columns ``id``, ``ref``, ``alt`` (and optionally ``task``).

    Raises:
        MissingFileError, ReaderError: as :func:`read_sequences`; an unknown task name is a
            RowError naming the line.
    """
    path = require_file(path, "variant file")
    variants, seen = [], {}
    for row, where in _table_rows(path, ("id", "ref", "alt")):
        here = Where(path, where.line, row["id"] or None)
        if not row["id"]:
            raise RowError(f"{where}: empty id; expected a non-empty value in column 'id'")
        for column in ("ref", "alt"):
            check_sequence(row[column], Where(path, where.line, f"{row['id']}, {column}"), max_len=max_len)
        task = row.get("task") or None
        if task is not None:
            try:
                get_task(task)
            except ValueError as err:
                raise RowError(f"{here}: {err}") from err
        claim_id(seen, row["id"], where)
        variants.append(Variant(row["id"], row["ref"], row["alt"], task))
    return variants


# ---------------------------------------------------------------- TSV output


def _number(value: float) -> str:
    """Numbers as TSV text: 6 significant digits is below the models' float32 noise; nan is ``nan``."""
    return "nan" if math.isnan(value) else f"{value:.6g}"


def prediction_header(task: str) -> list[str]:
    """Columns of :func:`prediction_rows`: ``id``, (``position``, ``base`` per position), ``p_<class>``..., ``label``."""
    spec = get_task(task)
    where = ["id", "position", "base"] if spec.per_position else ["id"]
    return [*where, *(f"p_{name}" for name in spec.label_names), "label"]


def prediction_rows(task: str, *, ids: Sequence[str], sequences: Sequence[str],
                    probabilities: Sequence[np.ndarray]) -> Iterator[list[str]]:
    """Rows of predictions: one per sequence, or one per base (1-based position) for per-position tasks;
    ``label`` is the most probable class's name."""
    spec = get_task(task)
    for record_id, sequence, prob in zip(ids, sequences, probabilities, strict=True):
        if spec.per_position:
            for position, (base, row) in enumerate(zip(sequence, prob, strict=True), start=1):
                yield [record_id, str(position), base, *map(_number, row), spec.label_names[int(np.argmax(row))]]
        else:
            yield [record_id, *map(_number, prob), spec.label_names[int(np.argmax(prob))]]


def variant_header(tasks: Sequence[str]) -> list[str]:
    """Columns of :func:`variant_rows`."""
    return ["id", "task", *(f"delta_{t}" for t in tasks), "attention_change", "score", "impact", "label"]


def variant_rows(impacts: Sequence[VariantImpact], tasks: Sequence[str]) -> Iterator[list[str]]:
    """One row per variant, columns as :func:`variant_header`."""
    for impact in impacts:
        deltas = [_number(impact.delta_probability[t]) for t in tasks]
        yield [impact.id, impact.task, *deltas, _number(impact.attention_change), _number(impact.score),
               _number(impact.impact), impact.label]
