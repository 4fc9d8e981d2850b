"""What every reader shares: the exception classes, error locations, line reading (plain or gzip),
and the checks on ids, bases and labels that must name the file and line they came from.

The dataset itself re-checks bases and labels, but it only knows record ids; these checks run
first, while the reader still knows the 1-based line, so a user can go straight to the fault.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.dataset import DataError, Record
from common.tasks import TaskSpec
from common.tokenizer import SequenceError, encode

BASES_EXPECTED = "A, C, G, T, U, N or an IUPAC ambiguity code (upper or lower case)"


class ReaderError(DataError):
    """A data file whose content cannot be read; the message names the file and line or record."""


class UnknownFormatError(ReaderError):
    """A path whose format cannot be told from its name or layout."""


class EmptyFileError(ReaderError):
    """A file (or split, or class directory) that holds no records."""


class HeaderError(ReaderError):
    """A table whose header row is missing or lacks a required column."""


class FastaFormatError(ReaderError):
    """Malformed FASTA: sequence before the first header, an empty record or header, an unindexable
    reference."""


class RowError(ReaderError):
    """A table or BED line with the wrong number of fields, an empty required field, or bytes that
    are not UTF-8 text."""


class BadSequenceError(ReaderError, SequenceError):
    """A sequence with an unknown base, no bases at all, or more bases than ``max_len``."""


class LabelError(ReaderError):
    """A label that is missing, not an integer, outside the task's classes, or (per-position) a
    label string whose length differs from its sequence's."""


class DuplicateIdError(ReaderError):
    """A record id seen twice in one file."""


class IntervalError(ReaderError):
    """A BED interval with bad coordinates or strand, or one running past its chromosome's end."""


class UnknownChromosomeError(IntervalError):
    """A BED interval on a chromosome the reference FASTA does not hold."""


class CompressedFileError(ReaderError):
    """A gzip file that is truncated or corrupt."""


class MissingFileError(FileNotFoundError):
    """A data, label or reference file (or a split of a dataset directory) that does not exist."""


@dataclass(frozen=True)
class Where:
    """Where something was read: a file, optionally its 1-based line and the record id."""

    path: Path
    line: int | None = None
    record: str | None = None

    def __str__(self) -> str:
        text = str(self.path)
        if self.line is not None:
            text += f", line {self.line}"
        if self.record is not None:
            text += f" (record {self.record!r})"
        return text


def require_file(path: str | Path, role: str) -> Path:
    """``path`` as a Path, or MissingFileError naming its role (data file, label file, reference)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: {role} not found; expected an existing path")
    return path


def is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, text without its line ending)``; ``.gz`` files are decompressed.

    Lines are decoded one at a time so a non-UTF-8 byte is reported on its own line.

    Raises:
        CompressedFileError: the gzip stream is truncated or corrupt.
        RowError: a line is not UTF-8 text.
    """
    line_no = 0
    try:
        with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as handle:
            for line_no, raw in enumerate(handle, start=1):
                yield line_no, _decode(raw, Where(path, line_no))
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise CompressedFileError(
            f"{Where(path, line_no + 1)}: gzip stream is truncated or corrupt ({err}); "
            f"expected a complete gzip file"
        ) from err


def _decode(raw: bytes, where: Where) -> str:
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise RowError(f"{where}: byte {err.start + 1} is not UTF-8 text; expected a text file") from err


def claim_id(seen: dict[str, Where], record_id: str, where: Where) -> None:
    """Record that ``record_id`` was read at ``where``; a second sighting is an error naming both."""
    if record_id in seen:
        raise DuplicateIdError(
            f"{where}: id {record_id!r} already used at {seen[record_id]}; expected unique ids"
        )
    seen[record_id] = Where(where.path, where.line)


def check_sequence(seq: str, where: Where, *, max_len: int | None) -> None:
    """Raise BadSequenceError if ``seq`` is empty, too long or holds a non-nucleotide character.

    A multi-line record finds its bad base with :func:`first_bad_base` and :func:`line_of` instead,
    to name the line the base is on.
    """
    if not seq:
        raise BadSequenceError(f"{where}: empty sequence; expected at least one base")
    check_length(seq, where, max_len=max_len)
    bad = first_bad_base(seq)
    if bad is not None:
        raise unknown_base_error(seq, bad, where)


def check_length(seq: str, where: Where, *, max_len: int | None) -> None:
    if max_len is not None and len(seq) > max_len:
        raise BadSequenceError(f"{where}: sequence of {len(seq)} bases exceeds max_len {max_len}")


def first_bad_base(seq: str) -> int | None:
    """0-based index of the first character the tokenizer rejects, or None if all are bases."""
    try:
        encode(seq)
        return None
    except SequenceError:
        # Only on the error path: ask the tokenizer about each character so the alphabet lives in one place.
        return next((i for i, ch in enumerate(seq) if not _is_base(ch)), None)


def _is_base(ch: str) -> bool:
    try:
        encode(ch)
        return True
    except SequenceError:
        return False


def line_of(lines: list[tuple[int, str]], position: int) -> int:
    """The file line holding 0-based ``position`` of the sequence joined from ``(line, text)`` pieces."""
    starts = list(itertools.accumulate((len(text) for _, text in lines[:-1]), initial=0))
    return lines[bisect.bisect_right(starts, position) - 1][0]


def unknown_base_error(seq: str, index: int, where: Where) -> BadSequenceError:
    return BadSequenceError(
        f"{where}: unknown base {seq[index]!r} at sequence position {index + 1}; expected {BASES_EXPECTED}"
    )


def parse_class_label(text: str, task: TaskSpec, where: Where) -> int:
    """One sequence-level label: a decimal integer naming one of the task's classes."""
    try:
        label = int(text.strip())
    except ValueError as err:
        raise LabelError(
            f"{where}: label {text!r} is not an integer; expected one of {_class_list(task)}"
        ) from err
    if not 0 <= label < task.num_classes:
        raise LabelError(f"{where}: label {label} is out of range; expected one of {_class_list(task)}")
    return label


def parse_position_labels(text: str, length: int, task: TaskSpec, where: Where) -> np.ndarray:
    """A per-position label string (one digit per base, e.g. ``0001200``) as an int64 array."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    labels = codes - ord("0")
    bad = np.flatnonzero((labels < 0) | (labels >= task.num_classes))
    if bad.size:
        pos = int(bad[0])
        raise LabelError(
            f"{where}: label character {text[pos]!r} at position {pos + 1} is not a class; "
            f"expected one digit per base from {_class_list(task)}"
        )
    if len(text) != length:
        raise LabelError(
            f"{where}: label string has {len(text)} characters for a sequence of {length} bases; "
            f"expected exactly one label per base"
        )
    return labels


def _class_list(task: TaskSpec) -> str:
    return ", ".join(f"{i} ({name})" for i, name in enumerate(task.label_names))


LABELLED_NAME = "id|label or id|label|species"


def parse_labelled_name(word: str, task: TaskSpec, where: Where) -> tuple[str, int, str | None]:
    """Split a FASTA header word or BED name ``id|label[|species]`` into id, label and species.

    Raises:
        LabelError: no label, empty or extra fields, or a bad label.
    """
    fields = word.split("|")
    if len(fields) == 1:
        raise LabelError(f"{where}: {word!r} carries no label; expected {LABELLED_NAME}, or pass label_file=")
    if len(fields) > 3 or not all(fields):
        raise LabelError(f"{where}: {word!r} has empty or extra '|' fields; expected {LABELLED_NAME}")
    label = parse_class_label(fields[1], task, where)
    return fields[0], label, fields[2] if len(fields) == 3 else None


_COMPLEMENT = str.maketrans(
    "ACGTUNRYSWKMBDHVacgtunryswkmbdhv",
    "TGCAANYRSWMKVHDBtgcaanyrswmkvhdb",
)


def reverse_complement(seq: str) -> str:
    """The other strand, read 5' to 3'; case and IUPAC ambiguity codes are kept (R<->Y, K<->M, ...)."""
    return seq.translate(_COMPLEMENT)[::-1]


@dataclass(frozen=True)
class SideLabel:
    """One row of a label file: the raw label text (parsed once the sequence is known)."""

    text: str
    species: str | None
    where: Where


def read_label_file(path: Path) -> dict[str, SideLabel]:
    """Read a side label file: ``id<TAB>label[<TAB>species]`` per line, optional header row
    ``id<TAB>label`` (or ``labels``), blank lines and ``#`` comments skipped.

    Labels stay text here: a per-position label string can only be checked against its sequence.

    Raises:
        MissingFileError, EmptyFileError, RowError, DuplicateIdError, CompressedFileError.
    """
    path = require_file(path, "label file")
    labels: dict[str, SideLabel] = {}
    seen: dict[str, Where] = {}
    for line_no, line in numbered_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if not seen and _is_label_header(fields):
            continue
        where = Where(path, line_no)
        if len(fields) not in (2, 3) or not fields[0]:
            raise RowError(
                f"{where}: {len(fields)} tab-separated fields {fields!r}; "
                f"expected id<TAB>label or id<TAB>label<TAB>species"
            )
        claim_id(seen, fields[0], where)
        species = fields[2] if len(fields) == 3 and fields[2] else None
        labels[fields[0]] = SideLabel(fields[1], species, Where(path, line_no, fields[0]))
    if not labels:
        raise EmptyFileError(f"{path}: label file holds no labels; expected id<TAB>label lines")
    return labels


def _is_label_header(fields: list[str]) -> bool:
    names = [f.strip().lower() for f in fields]
    return len(names) >= 2 and names[0] == "id" and names[1] in ("label", "labels")


def record_from_side_file(record_id: str, sequence: str, side: dict[str, SideLabel], task: TaskSpec,
                          where: Where, species: str | None) -> Record:
    """A record whose label (and maybe species) is the label file's row for ``record_id``.

    Raises:
        LabelError: no row for the id, or a bad label (named at its line in the label file).
    """
    if record_id not in side:
        raise LabelError(f"{where}: id {record_id!r} has no row in the label file; "
                         f"expected a row {record_id}<TAB>label")
    row = side[record_id]
    label = (parse_position_labels(row.text, len(sequence), task, row.where) if task.per_position
             else parse_class_label(row.text, task, row.where))
    return Record(record_id, sequence, label, row.species or species)
